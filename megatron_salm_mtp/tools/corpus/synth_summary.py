"""The summary of a synthetic corpus (``corpus.json``): per split, the voices it uses and how many
distinct words it holds, so a reader sees at once what ``test_unseen`` holds out."""

from __future__ import annotations

from .synth_text import SUBSETS
from .voices import HELD_OUT_BASES, HELD_OUT_VARIANTS


def distinct_words(rows) -> set[str]:
    """Lower-cased transcript words (names and sentence-initial capitals count once)."""
    return {w.lower() for r in rows for w in r['text'].split()}


def _split_summary(rows: list[dict]) -> dict:
    return {'utterances': len(rows), 'hours': round(sum(r['duration'] for r in rows) / 3600, 3),
            'distinct_words': len(distinct_words(rows)),
            'subsets': {s: sum(r['subset'] == s for r in rows) for s in SUBSETS},
            'noisy': sum(r['noise_snr_db'] is not None for r in rows),
            'reverberant': sum(r['reverb_rt60'] is not None for r in rows),
            'voices': sorted({r['voice'] for r in rows})}


def summarize(splits: dict[str, list[dict]], voices: dict[str, list[str]], missing: list[str],
              lexicon_words: dict[str, int]) -> dict:
    """Corpus-level and per-split figures; ``splits`` maps a split name to its manifest rows."""
    rows = [r for split_rows in splits.values() for r in split_rows]
    return {
        'splits': {k: len(v) for k, v in splits.items()},
        'subsets': {s: sum(r['subset'] == s for r in rows) for s in SUBSETS},
        'audio_seconds': round(sum(r['duration'] for r in rows), 2),
        'hours': round(sum(r['duration'] for r in rows) / 3600, 3),
        'distinct_words': len(distinct_words(rows)),
        'per_split': {k: _split_summary(v) for k, v in splits.items()},
        'voice_pool': {'seen': voices['seen'], 'unseen': voices['unseen'], 'missing': missing,
                       'held_out_bases': list(HELD_OUT_BASES), 'held_out_variants': list(HELD_OUT_VARIANTS)},
        'wordlist_lexicon': lexicon_words,
    }
