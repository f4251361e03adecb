"""Log-mel features against transformers' WhisperFeatureExtractor, and the frame-count contract."""

import numpy as np
import pytest
import torch

from megatron_salm_mtp.data.features import log_mel, mel_filterbank, pad_features
from megatron_salm_mtp.data.frames import mel_frames
from tests.support.data_fixtures import tone


@pytest.mark.parametrize('n', [0, 100, 159, 160, 199, 201, 16000, 16159, 23456])
def test_frame_count_is_the_contract(n):
    f = log_mel(np.zeros(n, np.float32) + 0.01, 80)
    assert f.shape == (80, mel_frames(n)) and f.dtype == torch.float32


def test_mel_filterbank_properties():
    fb = mel_filterbank(80)
    assert fb.shape == (201, 80) and (fb >= 0).all()
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) >= 0).all()  # centres rise with the mel index
    hz = np.linspace(0, 8000, 201)
    area = (fb * (hz[1] - hz[0])).sum(axis=0)
    assert np.allclose(area[10:], 1.0, atol=0.1)  # Slaney normalisation: unit area (coarse low bins aside)


@pytest.mark.parametrize('n_mels', [80, 128])
def test_matches_whisper_feature_extractor(n_mels):
    transformers = pytest.importorskip('transformers')
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    np.testing.assert_allclose(mel_filterbank(n_mels), fe.mel_filters, rtol=1e-10, atol=1e-12)
    for seconds, seed in [(1.0, 0), (2.37, 1), (0.05, 2), (3.99, 3)]:
        x = tone(seconds, seed=seed) * (0.2 + seed)
        ref = fe(x, sampling_rate=16000, padding='longest', return_tensors='np').input_features[0]
        ours = log_mel(x, n_mels).numpy()
        assert ours.shape == ref.shape == (n_mels, mel_frames(len(x)))
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_pad_features():
    a, b = torch.randn(80, 7), torch.randn(80, 3)
    out, lengths = pad_features([a, b], 80)
    assert out.shape == (2, 80, 7) and lengths.tolist() == [7, 3]
    assert torch.equal(out[1, :, :3], b) and (out[1, :, 3:] == 0).all()
    empty, n = pad_features([], 128)
    assert empty.shape == (0, 128, 0) and n.shape == (0,)
