"""Band-limited resampling in numpy, for corpus synthesis in many threads.

The same filter as :func:`.audio.resample` (Kaiser-windowed sinc, ``zeros`` zero crossings, same
roll-off and beta: the outputs agree to float rounding), but computed from each output phase's
non-zero taps only, in numpy with no torch call: torch's intra-op threads, multiplied by the
synthesis threads, oversubscribe the cores; numpy here stays on the calling thread.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@lru_cache(maxsize=8)
def phase_taps(up: int, down: int, zeros: int = 16, rolloff: float = 0.945, beta: float = 8.6):
    """``[up, 2 * half]`` taps: output phase ``p`` reads inputs ``floor(p * down / up) - half + 1 ...``."""
    cutoff = min(1.0, up / down) * rolloff  # as a fraction of the input Nyquist frequency
    half = int(math.ceil(zeros / cutoff))
    frac = (np.arange(up) * down % up) / up  # how far past its first-right input each phase sits
    d = np.arange(-half + 1, half + 1)[None, :] - frac[:, None]
    r = np.clip(d / half, -1.0, 1.0)
    window = np.where(np.abs(d) < half, np.i0(beta * np.sqrt(1.0 - r * r)) / np.i0(beta), 0.0)
    return (cutoff * np.sinc(cutoff * d) * window).astype(np.float32), half


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """1-D float32 signal at ``new_rate``; length ``ceil(len(x) * new / orig)`` as in :mod:`.audio`."""
    x = np.asarray(x, dtype=np.float32)
    if orig_rate == new_rate:
        return x.copy()
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    n_out = -(-len(x) * up // down)
    if n_out == 0:
        return np.zeros(0, np.float32)
    taps, half = phase_taps(up, down)
    blocks = -(-n_out // up)
    padded = np.zeros(half + blocks * down + 2 * half + down, np.float32)
    padded[half:half + len(x)] = x
    windows = sliding_window_view(padded, 2 * half)  # windows[i] = padded[i : i + 2 * half]
    out = np.empty(blocks * up, np.float32)
    for p in range(up):
        first = (p * down) // up + 1
        out[p::up] = windows[first:first + blocks * down:down][:blocks] @ taps[p]
    return out[:n_out]
