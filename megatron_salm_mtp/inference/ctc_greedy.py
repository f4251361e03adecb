"""Transcripts of the audio encoder's CTC head alone (``evaluate --ctc-greedy``).

Why: the CTC head reads the same encoder frames that the projector hands the LLM, and it spells
with no language model. Scored beside the SALM's greedy transcripts it says where errors come
from: words that both get wrong were not heard; words that CTC gets right and the LLM wrong were
heard and then rewritten (and the reverse is what the LLM's language model adds).

Best-path decoding: the argmax class of every valid frame, repeats merged, blanks (the last class)
dropped. The ids are the head's units: characters (``data.ctc_text``) are joined, tokenizer pieces
are decoded by the tokenizer; phoneme heads have no spelling to score.
"""

from collections.abc import Sequence

import torch

from ..data.ctc_text import CTC_CHARACTERS
from ..data.frames import encoder_frames
from .decode import DecodeStats, PromptBatch
from .timing import PhaseClock

SPELLED_UNITS = ('characters', 'tokens')
"""CTC target units whose best path is text (phonemes are not)."""


def best_path(classes: Sequence[int], blank: int) -> list[int]:
    """The labels of a frame-wise argmax path: repeats merged, then blanks dropped."""
    labels, previous = [], None
    for c in classes:
        if c != previous and c != blank:
            labels.append(c)
        previous = c
    return labels


def audio_separator(units: str) -> list[int]:
    """Labels put between two audios of one row: a space for characters; pieces carry their own."""
    return [CTC_CHARACTERS.index(' ')] if units == 'characters' else []


def ctc_text(labels: Sequence[int], units: str, tokenizer) -> str:
    """The text of CTC labels of ``units`` (one of :data:`SPELLED_UNITS`)."""
    if units == 'characters':
        return ''.join(CTC_CHARACTERS[i] for i in labels)
    return tokenizer.decode(list(labels))


@torch.no_grad()
def ctc_greedy_decode(model, batch: PromptBatch, separator: Sequence[int]):
    """(CTC labels per row, DecodeStats per row) of ``batch``; a row's audios (``batch.audios_per_row``)
    are decoded one after another, their labels joined by ``separator``."""
    clock = PhaseClock(batch.audio_features.device)
    clock.mark()
    frames = model.audio_encoder(batch.audio_features, batch.audio_feature_lengths)
    classes = model.ctc_head(frames).argmax(dim=-1)
    clock.mark()
    valid = encoder_frames(batch.audio_feature_lengths).tolist()
    blank = model.ctc_head.out_features - 1
    paths = [best_path(row[:n].tolist(), blank) for row, n in zip(classes, valid)]
    rows, start = [], 0
    for count in batch.audios_per_row:
        row = []
        for path in paths[start:start + count]:
            row += (list(separator) if row else []) + path
        rows.append(row)
        start += count
    stats = [DecodeStats() for _ in rows]
    stats[0].encode_seconds = clock.seconds(0, 1)
    return rows, stats
