"""VTLP: the frequency map, the warped features against an independent tone reference, and the
per-sample factor (the loader's behaviour is tested with SpecAugment's, test_spec_augment.py)."""

import numpy as np
import pytest
import torch

from megatron_salm_mtp.data.features import VTLP_BOUNDARY_HZ, log_mel, vtlp_warped_hz
from megatron_salm_mtp.data.loader import DataConfig
from megatron_salm_mtp.data.vtlp import VTLP

NYQUIST = 8000.0


def _tone(hz: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize('warp', [0.9, 0.95, 1.05, 1.1])
def test_the_map_scales_low_frequencies_and_keeps_the_band(warp):
    hz = np.linspace(0.0, NYQUIST, 2001)
    warped = vtlp_warped_hz(hz, warp, NYQUIST)
    assert warped[0] == 0.0 and warped[-1] == pytest.approx(NYQUIST)
    assert np.all(np.diff(warped) > 0)  # monotonic: no two frequencies fold together
    low = hz <= VTLP_BOUNDARY_HZ * min(warp, 1.0) / warp
    np.testing.assert_allclose(warped[low], warp * hz[low])
    assert np.max(np.abs(np.diff(warped))) < 2 * warp * (hz[1] - hz[0])  # continuous at the knee


def test_warp_one_is_whisper_features_exactly():
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert torch.equal(log_mel(audio, 80, warp=1.0), log_mel(audio, 80))
    assert np.array_equal(vtlp_warped_hz(np.array([123.0]), 1.0, NYQUIST), [123.0])


@pytest.mark.parametrize('warp', [0.9, 1.1])
def test_a_warped_tone_looks_like_the_scaled_tone(warp):
    """A 1 kHz tone warped by ``warp`` peaks in the mel bin of an unwarped ``warp`` kHz tone."""
    def peak_bin(features):
        return int(features.mean(dim=1).argmax())

    warped = peak_bin(log_mel(_tone(1000.0), 80, warp=warp))
    assert warped == peak_bin(log_mel(_tone(1000.0 * warp), 80))
    assert abs(warped - peak_bin(log_mel(_tone(1000.0), 80))) >= 2


def test_the_factor_is_a_quantised_function_of_seed_epoch_and_index():
    vtlp = VTLP(max_warp=0.1)
    factors = [vtlp.factor(seed=3, epoch=e, index=i) for e in range(4) for i in range(50)]
    assert all(0.9 <= f <= 1.1 and round(f, 2) == f for f in factors)
    assert len(set(factors)) > 10
    assert vtlp.factor(3, 1, 7) == vtlp.factor(3, 1, 7)
    assert [vtlp.factor(3, 0, i) for i in range(20)] != [vtlp.factor(3, 1, i) for i in range(20)]
    assert VTLP().factor(3, 1, 7) == 1.0 and not VTLP().enabled


def test_bad_settings():
    for bad in (-0.1, 0.5):
        with pytest.raises(ValueError, match='--vtlp-max-warp'):
            DataConfig(vtlp_max_warp=bad)
