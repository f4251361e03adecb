"""Decoding of a trained SALM: KV-cached greedy, MTP self-speculative decoding, WER.

``trunk_cache.py`` holds the LLM trunk's KV cache (Megatron-Core's static inference context plus
per-row slot bookkeeping), ``drafter.py`` the MTP drafts, ``decode.py`` the greedy and speculative
loops, ``inputs.py`` manifest -> prompts and features, ``loading.py`` checkpoint -> model,
``wer.py`` the word and character error rates (raw and Whisper-normalised), ``report.py`` the
evaluation figures and ``progress.py`` the progress lines of long work.
"""
