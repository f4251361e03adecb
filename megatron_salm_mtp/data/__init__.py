"""Speech data pipeline: manifests -> audio -> log-mel -> prompt ids -> contract microbatches.

Modules (each imports only the ones above it):

- ``progress``   "done/total, rate, ETA" lines of long work (printed, or to a logger)
- ``frames``     frame-count contract between data and model (mel frames -> placeholder tokens)
- ``resample``   band-limited polyphase resampler (odd rates approximated, never a huge kernel)
- ``audio``      WAV reader (PCM 8/16/24/32, float), FLAC/OGG via soundfile, NaN/inf check
- ``features``   Whisper-compatible log-mel (80/128 bins) without padding to 30 s
- ``spec_augment`` SpecAugment masks for training features, keyed on (seed, epoch, sample)
- ``manifest``   NeMo ASR/AST JSONL and multi-turn conversation JSONL -> ``Example``
- ``tokenizer``  byte-level (default), Hugging Face tokenizer.json, SentencePiece
- ``prompts``    templates plain / llama3 / qwen: ids, supervised marks, placeholder runs
- ``header_scan`` the prescan's audio headers: split between the ranks, cached beside the manifest
- ``dataset``    map-style dataset with prescan and skip/substitute of bad samples
- ``batching``   collate into the batch contract (see its docstring for the exact keys)
- ``packing``    ``--pack-sequences`` (the training default): utterances packed first-fit into rows,
                 per-row ``cu_seqlens``
- ``length_mix`` benchmark utterances of read speech's lengths, laid out padded and packed
- ``sampler``    DP-sharded, global-batch-consistent, resumable microbatch sampler
- ``loader``     ``DataConfig`` and ``build_dataloader`` (what the training loop calls)
- ``train_tokenizer`` ``python -m megatron_salm_mtp.data.train_tokenizer``: SentencePiece on a corpus

The synthetic corpus generator and the loading benchmark are tools, not the pipeline: ``tools/``.

Typical use in a training loop::

    loader = build_dataloader(DataConfig(seq_length=256, micro_batch_size=4, global_batch_size=16),
                              "corpus/train.jsonl", dp_rank=dp_rank, dp_size=dp_size,
                              consumed_samples=checkpoint.get("consumed_samples", 0))
    for microbatch in loader: ...          # one epoch per iter(); loader.state_dict() to checkpoint
"""
