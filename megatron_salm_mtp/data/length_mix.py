"""Utterances of realistic lengths for benchmarks, laid out padded and packed by the real collators.

Durations follow read speech: long-tailed, drawn log-normal (median ``MEDIAN_SECONDS``, spread
``SIGMA``: mean 9.6 s, 57 % of the utterances within 5-13 s, 5 % under 3 s, 3 % past 25 s), kept
within ``[MIN_SECONDS, max_seconds]``. Each utterance is ``[prompt | audio placeholders | 2 tokens |
answer | EOS]``: the placeholders are those the model makes of that much audio (``frames.py``)
and the answer is as long as that much read speech transcribed (``TOKENS_PER_SECOND``, about 160
words a minute at 1.3 pieces a word, +-20 %). An utterance longer than ``seq_length`` is dropped,
as the prescan skips it.

The same utterances give both layouts: ``padded_microbatches`` puts one per row (padded to
``seq_length``), ``packed_microbatches`` packs them first-fit as training does (``packing.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .batching import Collator
from .frames import HOP_LENGTH, SAMPLE_RATE, audio_tokens, encoder_frames
from .packing import PackedCollator, first_fit_rows

MEDIAN_SECONDS = 8.0
SIGMA = 0.6
MIN_SECONDS = 1.0
TOKENS_PER_SECOND = 3.5
PROMPT_TOKENS = 12


def draw_durations(count: int, max_seconds: float, seed: int) -> np.ndarray:
    """``count`` durations in seconds, log-normal around ``MEDIAN_SECONDS``, within [1, max_seconds]."""
    rng = np.random.default_rng([seed, 0x1e9])
    return np.clip(rng.lognormal(math.log(MEDIAN_SECONDS), SIGMA, count), MIN_SECONDS, max_seconds)


def utterance(seconds: float, vocab_size: int, audio_token_id: int, n_mels: int, stack: int,
              gen: torch.Generator) -> dict:
    """One sample as the dataset gives it (``ids``, ``supervised``, ``features``, ``ctc_targets``)."""
    frames = int(seconds * SAMPLE_RATE) // HOP_LENGTH
    answer = max(1, round(seconds * TOKENS_PER_SECOND * (0.8 + 0.4 * float(torch.rand(1, generator=gen)))))
    placeholders = audio_tokens(frames, stack)
    n = PROMPT_TOKENS + placeholders + 2 + answer + 1
    ids = torch.randint(0, vocab_size, (n,), generator=gen)
    ids[ids == audio_token_id] = 0
    ids[PROMPT_TOKENS:PROMPT_TOKENS + placeholders] = audio_token_id
    supervised = torch.zeros(n, dtype=torch.bool)
    supervised[n - answer - 1:] = True  # the answer and its EOS
    ctc = torch.randint(0, vocab_size, (encoder_frames(frames) // 4 + 1,), generator=gen)
    return {'ids': ids, 'supervised': supervised, 'features': [torch.randn(n_mels, frames, generator=gen)],
            'ctc_targets': [ctc.tolist()]}


def utterances(rows: int, seq_length: int, max_seconds: float, vocab_size: int, audio_token_id: int,
               n_mels: int, stack: int, seed: int) -> tuple[list[dict], int]:
    """(utterances that fit a row of ``seq_length``, at least ``rows`` of them and 1.5 x the
    positions of ``rows`` rows, so that they pack into ``rows`` rows; how many drawn did not fit)."""
    gen = torch.Generator().manual_seed(seed)
    kept, dropped, draw = [], 0, 0
    while len(kept) < rows or useful_tokens(kept) < 1.5 * rows * seq_length:
        for seconds in draw_durations(256, max_seconds, seed + draw):
            sample = utterance(float(seconds), vocab_size, audio_token_id, n_mels, stack, gen)
            if len(sample['ids']) - 1 <= seq_length:
                kept.append(sample)
            else:
                dropped += 1
        draw += 1
        if not kept and draw >= 8:
            raise ValueError(f'no utterance of {MIN_SECONDS:g}-{max_seconds:g} s fits --seq-length {seq_length}')
    return kept, dropped


def useful_tokens(samples: list[dict]) -> int:
    """Positions the samples fill (not padding): each sample's ids less the shift."""
    return sum(len(u['ids']) - 1 for u in samples)


def padded_microbatches(samples: list[dict], rows: int, micro_batch_size: int, seq_length: int,
                        pad_id: int, n_mels: int) -> tuple[list[dict], int]:
    """(microbatches of ``rows`` rows in all, one sample each padded to ``seq_length``; useful tokens)."""
    if len(samples) < rows:
        raise ValueError(f'{len(samples)} utterances cannot fill {rows} padded rows')
    collate = Collator(pad_id, seq_length, n_mels, pad_to_seq_length=True)
    chosen = samples[:rows]
    return ([collate(chosen[i:i + micro_batch_size]) for i in range(0, rows, micro_batch_size)],
            useful_tokens(chosen))


def packed_microbatches(samples: list[dict], rows: int, micro_batch_size: int, seq_length: int,
                        pad_id: int, n_mels: int, window: int, seed: int) -> tuple[list[dict], int]:
    """(microbatches of ``rows`` packed rows, drawn at random from all the rows the samples
    pack into, as an epoch draws them; useful tokens)."""
    packed = first_fit_rows([len(u['ids']) - 1 for u in samples], seq_length, window, seed)
    if len(packed) < rows:
        raise ValueError(f'{len(samples)} utterances pack into {len(packed)} rows, fewer than {rows}')
    order = np.random.default_rng([seed, 0x9ac5]).permutation(len(packed))[:rows]
    chosen = [{'samples': [samples[i] for i in packed[r]]} for r in order.tolist()]
    collate = PackedCollator(pad_id, seq_length, n_mels)
    return ([collate(chosen[i:i + micro_batch_size]) for i in range(0, rows, micro_batch_size)],
            sum(useful_tokens(row['samples']) for row in chosen))
