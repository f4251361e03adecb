"""Collate: samples -> the microbatch dict the model consumes (the data/model contract).

For ``b`` samples and sequence length ``s``, exactly these keys::

    tokens                 LongTensor  [b, s]   input ids; each audio is a run of
                                                audio_tokens(mel_frames, stack) ids equal to
                                                tokenizer.audio_token_id
    labels                 LongTensor  [b, s]   next-token targets: seq[1:] where tokens = seq[:-1]
                                                (pad_id after the sequence ends)
    loss_mask              FloatTensor [b, s]   1.0 where labels[i, j] is a supervised answer token
    position_ids           LongTensor  [b, s]   0..s-1 on every row
    audio_features         FloatTensor [n_audio, n_mels, T]  log-mel per audio, zero-padded in time to
                                                the longest rounded up to --audio-pad-multiple,
                                                in row-major order of the placeholder runs
    audio_feature_lengths  LongTensor  [n_audio] valid mel frames of each audio
    ctc_targets            LongTensor  [n_audio, L_max] per audio, the token ids its transcript
                                                tokenises to (answer text, no prompt/EOS), 0-padded
    ctc_target_lengths     LongTensor  [n_audio] valid ids of each row; 0: no CTC target
                                                (see ``dataset.ctc_targets``)

With ``--pack-sequences`` rows hold several utterances (:mod:`.packing`): ``position_ids``
restart per utterance and one more key, ``cu_seqlens`` [b, u_max + 1], gives each row's
utterance starts followed by ``s``.

Why ``s + 1`` ids are built then shifted: labels at position ``j`` is the token at ``j + 1``, so
the last input position still has a target; a sample of exactly ``seq_length + 1`` ids fits.

``s`` is ``seq_length`` when ``pad_to_seq_length`` (required under pipeline parallelism, where
stages exchange fixed-shape activations); otherwise the longest sample rounded up to
``pad_to_multiple`` (fewer padded positions; pair with length bucketing in the sampler).
"""

from __future__ import annotations

import torch

from .features import EXACT_AUDIO, AudioPadding, pad_features

BATCH_KEYS = ('tokens', 'labels', 'loss_mask', 'position_ids', 'audio_features', 'audio_feature_lengths',
              'ctc_targets', 'ctc_target_lengths')


class Collator:
    """Picklable collate function (DataLoader workers get a copy)."""

    def __init__(self, pad_id: int, seq_length: int, n_mels: int = 80, pad_to_seq_length: bool = True,
                 pad_to_multiple: int = 8, audio_padding: AudioPadding = EXACT_AUDIO):
        self.pad_id, self.seq_length, self.n_mels = pad_id, seq_length, n_mels
        self.pad_to_seq_length, self.pad_to_multiple = pad_to_seq_length, pad_to_multiple
        self.audio_padding = audio_padding

    def _length(self, samples) -> int:
        if self.pad_to_seq_length:
            return self.seq_length
        longest = max(len(x['ids']) - 1 for x in samples)
        m = self.pad_to_multiple
        return min(self.seq_length, -(-longest // m) * m)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        b, s = len(samples), self._length(samples)
        seq = torch.full((b, s + 1), self.pad_id, dtype=torch.long)
        sup = torch.zeros(b, s + 1, dtype=torch.bool)
        features, targets = [], []
        for i, x in enumerate(samples):
            n = len(x['ids'])
            if n > s + 1:
                raise ValueError(f'sample of {n} ids does not fit seq_length {s} (+1 for the shift)')
            seq[i, :n] = x['ids']
            sup[i, :n] = x['supervised']
            features.extend(x['features'])
            targets.extend(x['ctc_targets'])
        audio_features, lengths = pad_features(features, self.n_mels, self.audio_padding)
        ctc_targets, ctc_lengths = pad_targets(targets)
        return {
            'tokens': seq[:, :-1].contiguous(),
            'labels': seq[:, 1:].contiguous(),
            'loss_mask': sup[:, 1:].to(torch.float32),
            'position_ids': torch.arange(s, dtype=torch.long).unsqueeze(0).expand(b, s).contiguous(),
            'audio_features': audio_features,
            'audio_feature_lengths': lengths,
            'ctc_targets': ctc_targets,
            'ctc_target_lengths': ctc_lengths,
        }


def pad_targets(targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> ``[n, L_max]`` (0-padded) and their lengths ``[n]``."""
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    out = torch.zeros(len(targets), int(lengths.max()) if targets else 0, dtype=torch.long)
    for i, t in enumerate(targets):
        out[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return out, lengths


class CollatorWithSkips(Collator):
    """Collate that also returns the skips met while producing the samples (for the loader)."""

    def __call__(self, samples: list[dict]):
        skipped = [s for x in samples for s in x.get('skipped', ())]
        return super().__call__(samples), skipped
