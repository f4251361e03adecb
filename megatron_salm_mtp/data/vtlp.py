"""Vocal tract length perturbation (Jaitly & Hinton, 2013), training only: each utterance's
frequency axis is scaled by a factor drawn uniformly from ``[1 - max_warp, 1 + max_warp]``, so the
encoder meets every training voice with longer and shorter vocal tracts (its formants shifted
together) and generalises to voices it never heard. The warp itself is in the mel filterbank
(:func:`.features.mel_filterbank`); this module draws the factor.

Like SpecAugment's masks, the factor is a function of ``(seed, epoch, sample index)`` alone: a
resumed run warps every utterance as the uninterrupted run would. It is quantised to 0.01 so the
feature workers reuse a few dozen cached filterbanks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_STREAM = 0x7C  # separates this generator from SpecAugment's, keyed by the same (seed, epoch, index)
STEP = 0.01


@dataclass(frozen=True)
class VTLP:
    max_warp: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_warp > 0

    def factor(self, seed: int, epoch: int, index: int) -> float:
        """The warp of one sample in one epoch (1.0 when disabled)."""
        if not self.enabled:
            return 1.0
        draw = np.random.default_rng([seed, epoch, index, _STREAM]).uniform(-self.max_warp, self.max_warp)
        return round(1.0 + round(draw / STEP) * STEP, 2)
