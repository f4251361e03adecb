"""Decoding of a trained SALM: KV-cached greedy, MTP self-speculative decoding, WER.

``kv_cache.py`` keeps keys and values by position, row by row (``trunk_cache.py`` runs the LLM
trunk over it, ``drafter.py`` the MTP drafts with one cache per depth), ``decode.py`` the greedy
and speculative loops, ``inputs.py`` manifest -> prompts and features, ``loading.py`` checkpoint
-> model, ``wer.py`` the word and character error rates (raw and Whisper-normalised),
``report.py`` the evaluation figures and ``progress.py`` the progress lines of long work.
"""
