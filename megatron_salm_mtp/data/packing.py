"""Packed sequences: several utterances per row of ``seq_length`` tokens (``--pack-sequences``).

Which utterances share a row is decided once per run, before training, as NeMo and Megatron-Bridge
prepare packed fine-tuning data: the dataset order is shuffled with the data seed, cut into windows
of ``pack_window`` utterances, and each window is sorted by length (longest first) and packed
first-fit into rows. Each epoch then shuffles the *rows*, so the sampler, its global-batch
arithmetic and its exact resume work unchanged on row indices: with packing, ``micro_batch_size``,
``global_batch_size`` and ``consumed_samples`` count rows (Megatron's convention for packed data),
and every microbatch is the token budget ``micro_batch_size x seq_length``, filled by construction.

A row never loads half: every utterance of it is loaded; one that fails to load is left out of its
row (its span stays padding) and reported as a skip, so the row's place in the epoch, the batch
shapes and the resume position do not move.

Batch contract additions (see :mod:`.batching`): ``position_ids`` restart at 0 for each utterance
(and for the padding at the end of a row), and ``cu_seqlens`` [b, u_max + 1] holds each row's
utterance starts followed by ``s``, repeated to the width of the batch; the padding tail of a row is
one more segment. The model keeps attention, RoPE positions and the MTP chain inside a segment.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .batching import BATCH_KEYS, pad_targets
from .dataset import SEQUENCE_TOO_LONG, Skip, SpeechDataset
from .features import EXACT_AUDIO, AudioPadding, pad_features

PACKED_BATCH_KEYS = BATCH_KEYS + ('cu_seqlens',)


def first_fit_rows(lengths, capacity: int, window: int, seed: int) -> list[list[int]]:
    """Rows (lists of indices into ``lengths``) of at most ``capacity`` positions each.

    ``lengths`` are positions per utterance (its ids minus the shift). Within each window of the
    seeded permutation, longest first, each utterance goes to the first row with room (first-fit
    decreasing); rows do not outlive their window, so a row holds utterances drawn together.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f'an utterance of {lengths.max()} positions exceeds the row of {capacity}')
    order = np.random.default_rng([seed, 0x9ac4]).permutation(len(lengths))
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind='stable')]
        room = np.empty(0, dtype=np.int64)
        members: list[list[int]] = []
        for index in chunk.tolist():
            fits = np.flatnonzero(room >= lengths[index])
            if fits.size:
                row = int(fits[0])
            else:
                row, room = len(members), np.append(room, capacity)
                members.append([])
            members[row].append(index)
            room[row] -= lengths[index]
        rows.extend(members)
    return rows


class PackedRows(torch.utils.data.Dataset):
    """Row ``r`` (or ``(r, epoch)``) -> ``{"samples": [...], "skipped": [...]}``: every utterance of
    the row, loaded by ``dataset`` without substitution (a failed one is dropped and reported)."""

    def __init__(self, dataset: SpeechDataset, window: int, seed: int):
        self.dataset = dataset
        positions = [n - 1 for n in dataset.lengths]
        self.rows = first_fit_rows(positions, dataset.seq_length, window, seed)
        self.lengths = [sum(positions[i] for i in row) + 1 for row in self.rows]
        self.seq_length = dataset.seq_length

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def digest(self) -> str:
        """Fingerprint of the rows: a checkpoint's position in rows means nothing in other rows."""
        flat = np.concatenate([np.asarray(row + [-1], dtype=np.int64) for row in self.rows])
        return hashlib.sha1(flat.tobytes()).hexdigest()[:16]

    @property
    def augments(self) -> bool:
        return self.dataset.augments

    def prescan_skip_counts(self) -> dict[str, int]:
        return self.dataset.prescan_skip_counts()

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        r, epoch = key if isinstance(key, tuple) else (key, None)
        samples, skipped, used = [], [], 0
        for index in self.rows[r]:
            sample, skip = self.dataset.load_or_skip(index, epoch)
            if sample is not None and used + len(sample['ids']) - 1 > self.seq_length:
                where = self.dataset.examples[self.dataset.valid[index]].where
                skip = Skip(where, SEQUENCE_TOO_LONG, 'longer than when the prescan measured it; '
                            'it no longer fits its packed row')
                self.dataset.report(skip)
                sample = None
            if sample is None:
                skipped.append(skip)
                continue
            used += len(sample['ids']) - 1
            samples.append(sample)
        return {'samples': samples, 'skipped': skipped}


class PackedCollator:
    """Rows of samples -> the packed microbatch (``PACKED_BATCH_KEYS``), every row ``seq_length``
    positions, audio features in row-major order of their placeholder runs."""

    def __init__(self, pad_id: int, seq_length: int, n_mels: int = 80, audio_padding: AudioPadding = EXACT_AUDIO):
        self.pad_id, self.seq_length, self.n_mels = pad_id, seq_length, n_mels
        self.audio_padding = audio_padding

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        b, s = len(rows), self.seq_length
        tokens = torch.full((b, s), self.pad_id, dtype=torch.long)
        labels = torch.full((b, s), self.pad_id, dtype=torch.long)
        loss_mask = torch.zeros(b, s, dtype=torch.float32)
        position_ids = torch.zeros(b, s, dtype=torch.long)
        starts, features, targets = [], [], []
        for i, row in enumerate(rows):
            at, row_starts = 0, []
            for x in row['samples']:
                n = len(x['ids']) - 1
                if at + n > s:
                    raise ValueError(f'packed row of {at + n} positions exceeds seq_length {s}')
                tokens[i, at:at + n], labels[i, at:at + n] = x['ids'][:-1], x['ids'][1:]
                loss_mask[i, at:at + n] = x['supervised'][1:].float()
                position_ids[i, at:at + n] = torch.arange(n)
                row_starts.append(at)
                at += n
                features.extend(x['features'])
                targets.extend(x['ctc_targets'])
            if at < s:  # the padding tail: a segment of its own
                row_starts.append(at)
                position_ids[i, at:] = torch.arange(s - at)
            starts.append(row_starts)
        width = max(len(r) for r in starts) + 1
        cu_seqlens = torch.full((b, width), s, dtype=torch.long)
        for i, row_starts in enumerate(starts):
            cu_seqlens[i, :len(row_starts)] = torch.tensor(row_starts, dtype=torch.long)
        audio_features, lengths = pad_features(features, self.n_mels, self.audio_padding)
        ctc_targets, ctc_lengths = pad_targets(targets)
        return {'tokens': tokens, 'labels': labels, 'loss_mask': loss_mask, 'position_ids': position_ids,
                'audio_features': audio_features, 'audio_feature_lengths': lengths,
                'ctc_targets': ctc_targets, 'ctc_target_lengths': ctc_lengths, 'cu_seqlens': cu_seqlens}


class PackedCollatorWithSkips(PackedCollator):
    """Packed collate that also returns the skips met while loading the rows (for the loader)."""

    def __call__(self, rows: list[dict]):
        return super().__call__(rows), [s for row in rows for s in row['skipped']]


def segment_ids(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[b, s] index of the segment (utterance, or padding tail) each position belongs to."""
    positions = torch.arange(seq_length, device=cu_seqlens.device).expand(cu_seqlens.shape[0], -1)
    return torch.searchsorted(cu_seqlens[:, 1:].contiguous(), positions.contiguous(), right=True)
