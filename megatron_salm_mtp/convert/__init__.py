"""Pretrained weights in and out: Hugging Face Llama / Qwen2 / Qwen3 causal LMs and Whisper encoders
into the SALM at any TP/PP layout, MTP heads attached or kept, and export back to Hugging Face.

    python -m megatron_salm_mtp.convert import-hf --llm DIR [--whisper DIR] --out CKPT ...
    python -m megatron_salm_mtp.convert export-hf --load CKPT --out DIR

Layering: ``source.py`` reads safetensors lazily; ``recipes.py`` says how one Megatron tensor (full,
TP=1 name) is made from Hugging Face tensors and how a TP shard of it is read without building the
rest; ``hf_llm.py`` / ``hf_whisper.py`` hold the name maps and config translation; ``mtp_init.py``
attaches MTP heads; ``load.py`` fills a rank's model chunk; ``export.py`` goes the other way.
"""
