"""Whisper-compatible log-mel features, without Whisper's padding to 30 seconds.

Why compatible: users start from pretrained Whisper encoders, whose weights only work on the exact
features they were trained on: 25 ms periodic Hann window (n_fft 400) every 10 ms (hop 160) at
16 kHz, power spectrum, Slaney-normalised mel filterbank on the Slaney mel scale from 0 to 8 kHz,
log10 floored at 1e-10, values clamped to (utterance max - 8), then ``(x + 4) / 4``. The STFT is
centred with reflect padding and Whisper drops its last frame, hence ``frames.mel_frames(n)``.

Why no 30 s padding: SALM batches carry variable-length audio; the encoder sees each utterance's
valid frames (``audio_feature_lengths``), and the placeholder run is sized from the same count.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from .frames import HOP_LENGTH, SAMPLE_RATE, mel_frames

N_FFT = 400


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = 3.0 * hz / 200.0
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / log_step, lin)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


VTLP_BOUNDARY_HZ = 4800.0  # VTLP's warp is linear below this (scaled by the factor), then bends to Nyquist


def vtlp_warped_hz(hz: np.ndarray, warp: float, nyquist: float) -> np.ndarray:
    """Vocal tract length perturbation's frequency map (Jaitly & Hinton, 2013): ``f -> warp * f``
    up to ``VTLP_BOUNDARY_HZ x min(warp, 1) / warp``, then linear so that Nyquist stays Nyquist
    (no energy leaves or enters the band). ``warp`` 1 is the identity."""
    if warp == 1.0:
        return hz
    knee = VTLP_BOUNDARY_HZ * min(warp, 1.0) / warp
    upper = nyquist - (nyquist - VTLP_BOUNDARY_HZ * min(warp, 1.0)) / (nyquist - knee) * (nyquist - hz)
    return np.where(hz <= knee, warp * hz, upper)


@lru_cache(maxsize=64)
def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float = 8000.0, warp: float = 1.0) -> np.ndarray:
    """Triangular filters ``[n_fft // 2 + 1, n_mels]``, area-normalised (Slaney), float64.

    Filter ``m`` rises from mel point ``m`` to ``m + 1`` and falls to ``m + 2`` (points evenly spaced
    on the mel scale, edges included), evaluated at the FFT bin frequencies; each triangle is then
    scaled by ``2 / (upper_hz - lower_hz)`` so that all filters have the same area. With ``warp``
    (VTLP, training only) the filters read the spectrum at the warped bin frequencies: a formant at
    ``f`` lands in the filter of ``vtlp_warped_hz(f)``, as if the speaker's vocal tract were
    ``1 / warp`` times as long.
    """
    bins = vtlp_warped_hz(np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1), warp, sample_rate / 2.0)
    mel_pts = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    lower, centre, upper = hz_pts[:-2], hz_pts[1:-1], hz_pts[2:]
    rising = (bins[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins[:, None]) / (upper - centre)[None, :]
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return tri * (2.0 / (upper - lower))[None, :]


@lru_cache(maxsize=64)  # VTLP factors come quantised (``vtlp.VTLP``): a few dozen filterbanks
def _torch_constants(n_mels: int, warp: float) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)
    filters = torch.from_numpy(mel_filterbank(n_mels, warp=warp).T.copy()).to(torch.float32)  # [n_mels, bins]
    return window, filters


def log_mel(audio: np.ndarray | torch.Tensor, n_mels: int = 80, warp: float = 1.0) -> torch.Tensor:
    """Log-mel of 16 kHz mono audio: float32 ``[n_mels, frames.mel_frames(len(audio))]``;
    ``warp``: the VTLP factor of :func:`mel_filterbank` (1: Whisper's features exactly).

    Audio shorter than ``n_fft // 2 + 1`` samples cannot be reflect-padded; it is zero-padded for
    the STFT instead (those utterances are far below any useful length and yield 0-2 frames).
    """
    if n_mels not in (80, 128):
        raise ValueError(f"n_mels must be 80 or 128 (Whisper's feature sizes), got {n_mels}")
    x = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
    n = x.numel()
    t = mel_frames(n)
    if t == 0:
        return torch.zeros(n_mels, 0, dtype=torch.float32)
    window, filters = _torch_constants(n_mels, float(warp))
    if n <= N_FFT // 2:
        x = torch.nn.functional.pad(x, (N_FFT // 2, N_FFT // 2))
        spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    else:
        spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode='reflect',
                          return_complex=True)
    power = (spec[:, :t].abs() ** 2).contiguous()
    mel = filters @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


class AudioPadding(NamedTuple):
    """How far a batch's audio is padded in time: its longest audio rounded up to ``multiple``
    frames, never past ``limit`` (the longest audio the data admits; None: no limit). Few distinct
    shapes let the GPU reuse what it builds per shape (cuDNN attention graphs)."""
    multiple: int = 1
    limit: int | None = None

    def frames(self, longest: int) -> int:
        rounded = -(-longest // self.multiple) * self.multiple
        return rounded if self.limit is None else max(longest, min(rounded, self.limit))


EXACT_AUDIO = AudioPadding()
"""No rounding: every batch as long as its longest audio."""


def pad_features(features: list[torch.Tensor], n_mels: int,
                 padding: AudioPadding = EXACT_AUDIO) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[n_mels, T_i]`` tensors into ``[n, n_mels, T]`` (zeros after each end) + lengths;
    ``T`` is the longest ``T_i`` padded as ``padding`` says."""
    lengths = torch.tensor([f.shape[1] for f in features], dtype=torch.long)
    t_max = padding.frames(int(lengths.max())) if len(features) else 0
    out = torch.zeros(len(features), n_mels, t_max, dtype=torch.float32)
    for i, f in enumerate(features):
        out[i, :, : f.shape[1]] = f
    return out, lengths
