"""SpecAugment (Park et al., 2019) on log-mel features: frequency and time masks, training only.

Why in the data workers: masking is cheap elementwise work on the CPU copy, and done there it is a
function of ``(seed, epoch, sample index)`` alone, so a resumed run masks every utterance exactly
as the uninterrupted run would (the sampler's position fixes the epoch; see ``loader.py``).
Validation and evaluation never see it: only ``build_dataloader(..., augment=True)`` applies it.

Widths, NeMo's way: a frequency mask covers ``[0, freq_width]`` mel bins (uniform), a time mask
``[0, time_width x frames]`` frames - a fraction of the utterance, so a 1 s and a 20 s utterance
lose the same share. Masks may overlap. Masked values take the utterance's mean log-mel: Whisper
features are not mean-normalised, so the mean is the neutral value (0 would be a fixed level).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_STREAM = 0x5A  # separates this generator from any other draw keyed by (seed, epoch, index)


@dataclass(frozen=True)
class SpecAugment:
    freq_masks: int = 0
    freq_width: int = 27
    time_masks: int = 0
    time_width: float = 0.05

    @property
    def enabled(self) -> bool:
        return self.freq_masks > 0 or self.time_masks > 0

    def generator(self, seed: int, epoch: int, index: int) -> np.random.Generator:
        """The masks' random stream of one sample in one epoch."""
        return np.random.default_rng([seed, epoch, index, _STREAM])

    def __call__(self, features: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A masked copy of ``features`` [n_mels, T]."""
        n_mels, frames = features.shape
        if frames == 0:
            return features
        out = features.clone()
        fill = float(features.mean())
        for _ in range(self.freq_masks):
            width = int(rng.integers(0, min(self.freq_width, n_mels) + 1))
            start = int(rng.integers(0, n_mels - width + 1))
            out[start:start + width, :] = fill
        max_time = int(self.time_width * frames)
        for _ in range(self.time_masks):
            width = int(rng.integers(0, max_time + 1))
            start = int(rng.integers(0, frames - width + 1))
            out[:, start:start + width] = fill
        return out
