"""Acoustic augmentation of the synthetic corpus: room reverberation and additive noise (numpy).

Why: espeak-ng's output is studio-clean; a recogniser trained only on it meets reverberant,
noisy speech as a new domain. Both run at synthesis time on a fraction of the utterances, drawn from
the utterance's own generator, so they are as reproducible as the rest of the corpus.

- Reverberation: a synthetic impulse response, a direct path then exponentially decaying noise
  whose level falls by 60 dB in ``rt60`` seconds (Sabine's reverberation time), starting a few
  milliseconds after it at a direct-to-reverberant ratio ``drr_db``; convolution by FFT.
- Noise: white, pink (1/f power) or brown (1/f^2) noise at a signal-to-noise ratio measured on the
  active speech (samples above 1 % of the peak), so pauses do not lower the speech power.
"""

from __future__ import annotations

import numpy as np

NOISE_COLOURS = {'white': 0.0, 'pink': 1.0, 'brown': 2.0}  # exponent of 1/f in the power spectrum


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float, drr_db: float) -> np.ndarray:
    """Direct path at 0, a decaying tail from 2-10 ms on (energy ratio direct/tail = ``drr_db``)."""
    n = max(2, int(rt60 * sample_rate))
    onset = int(rng.uniform(0.002, 0.010) * sample_rate)
    t = np.arange(n - onset) / sample_rate
    tail = rng.standard_normal(n - onset) * np.exp(-6.9078 * t / rt60)  # ln(1000): -60 dB at rt60
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(float(np.sum(tail ** 2)), 1e-12))
    h = np.zeros(n, np.float64)
    h[0] = 1.0
    h[onset:] += tail
    return h


def reverberate(audio: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``audio`` convolved with ``h``, trimmed to its own length (the tail past the end is dropped)."""
    n = len(audio) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(h, size), size)[: len(audio)]
    return wet.astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-power noise whose power spectrum falls as 1/f^exponent (white: flat)."""
    exponent = NOISE_COLOURS[colour]
    if exponent == 0.0 or n < 2:
        return rng.standard_normal(n)
    size = 1 << (n - 1).bit_length()  # a power of two: an FFT of a large prime length is ~10x slower
    spectrum = np.fft.rfft(rng.standard_normal(size))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0  # no infinite gain at DC
    shaped = np.fft.irfft(spectrum / f ** (exponent / 2.0), size)[:n]
    shaped -= shaped.mean()
    return shaped / max(float(np.sqrt(np.mean(shaped ** 2))), 1e-12)


def speech_power(audio: np.ndarray) -> float:
    """Mean power of the samples above 1 % of the peak (the speech, not the pauses)."""
    if not audio.size:
        return 0.0
    active = audio[np.abs(audio) > 0.01 * float(np.abs(audio).max())]
    return float(np.mean(active.astype(np.float64) ** 2)) if active.size else 0.0


def add_noise(rng: np.random.Generator, audio: np.ndarray, snr_db: float, colour: str) -> np.ndarray:
    noise = coloured_noise(rng, len(audio), colour) * np.sqrt(speech_power(audio) / 10.0 ** (snr_db / 10.0))
    return (audio + noise).astype(np.float32)
