"""Character targets for the CTC head (``--ctc-target-units characters``).

Why characters as well as the tokenizer's pieces: a CTC head over 38 characters leaves its blank
plateau far sooner than one over a 1,000-piece vocabulary (each class is seen more often), which is
what a from-scratch encoder needs first; the LLM still writes the tokenizer's pieces.

Text is lowercased; letters, digits and the apostrophe are kept, every other run of characters
becomes one space (so "Call 5 5 1!" -> "call 5 5 1").
"""

from __future__ import annotations

import re

CTC_CHARACTERS = " abcdefghijklmnopqrstuvwxyz0123456789'"
"""The alphabet; a character's id is its index (the CTC blank comes after the last)."""
CTC_TARGET_UNITS = ('tokens', 'characters', 'phonemes')  # phonemes: ctc_phonemes.py

_INDEX = {c: i for i, c in enumerate(CTC_CHARACTERS)}
_OTHER = re.compile(r"[^a-z0-9']+")


def spelled(text: str) -> str:
    """``text`` in the alphabet: lowercased, each run of other characters one space (kept at the
    ends, where :func:`character_ids` strips it: a piece of text may end a word)."""
    return _OTHER.sub(' ', text.lower())


def character_ids(text: str) -> list[int]:
    """``text`` as ids of :data:`CTC_CHARACTERS` (see the module docstring)."""
    return [_INDEX[c] for c in spelled(text).strip()]


def piece_texts(tokenizer, vocab_size: int) -> list[str]:
    """The text each id adds after another piece (a SentencePiece piece's leading '▁' decodes to a
    space only there); specials and ids past the tokenizer's vocabulary add ''."""
    anchor = tokenizer.encode('a')
    before = tokenizer.decode(anchor)
    texts = []
    for token in range(vocab_size):
        text = tokenizer.decode(anchor + [token])
        texts.append(text[len(before):] if text.startswith(before) else tokenizer.decode([token]))
    return texts


def spelled_pieces(tokenizer, vocab_size: int) -> list[str]:
    """Each id's text in the alphabet (:func:`spelled`): its word breaks are spaces, at its ends too."""
    return [spelled(t) for t in piece_texts(tokenizer, vocab_size)]
