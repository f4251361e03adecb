"""Audio that used to crash or poison training: odd header rates, NaN samples, implausible rates,
files no decoder recognises. Each is read correctly or becomes a counted skip naming the file."""

import logging

import numpy as np
import pytest

from megatron_salm_mtp.data.audio import AudioError, NonFiniteAudio, audio_info, load_audio, write_wav
from megatron_salm_mtp.data.dataset import BadSampleError
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader, build_dataset
from megatron_salm_mtp.data.resample import MAX_RATIO_TERM, resample_ratio, resampled_length
from tests.support.data_fixtures import make_corpus, tone, write_manifest


def cfg(**kw):
    # one utterance per row: a bad one is substituted (packed rows: tests/unit/data/test_data_packing.py)
    return DataConfig(**dict(dict(seq_length=80, micro_batch_size=2, global_batch_size=8, max_duration=5.0,
                                  default_prompt=None, pack_sequences=False), **kw))


def peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[spectrum.argmax()])


@pytest.mark.parametrize('rate', [7999, 8001, 12345, 16001, 22051, 44101, 47999, 96001])
def test_odd_rates_use_a_small_kernel_close_to_the_true_ratio(rate):
    """16,001 Hz used to need 16,000 phases x 16,035 taps (a MemoryError, or the OOM killer)."""
    up, down = resample_ratio(rate, 16000)
    assert max(up, down) <= MAX_RATIO_TERM
    assert abs(up / down * rate / 16000 - 1) < 2e-4


@pytest.mark.parametrize('rate,expected', [(44100, (160, 441)), (22050, (320, 441)), (48000, (1, 3)),
                                           (8000, (2, 1)), (11025, (640, 441)), (16000, (1, 1))])
def test_common_rates_stay_exact(rate, expected):
    assert resample_ratio(rate, 16000) == expected


def test_a_16001_hz_wav_loads_as_the_tone_it_holds(tmp_path):
    path = str(tmp_path / 'odd.wav')
    write_wav(path, tone(1.0, 16001, 440.0), 16001)
    info = audio_info(path)
    wav = load_audio(path)
    assert info.sample_rate == 16001 and len(wav) == resampled_length(info.num_frames, 16001, 16000)
    assert abs(peak_hz(wav) - 440.0) < 2.0


def test_implausible_header_rates_are_unreadable(tmp_path):
    for rate in (100, 2_000_000):
        path = str(tmp_path / f'r{rate}.wav')
        write_wav(path, tone(0.5, 16000), rate)
        with pytest.raises(AudioError, match=f'r{rate}.wav: implausible sample rate {rate} Hz'):
            audio_info(path)


def test_nan_samples_are_a_counted_skip_naming_the_file(tmp_path, caplog):
    """The header is fine, so the prescan keeps the file; decoding finds the NaN and the sample is
    replaced: no batch ever holds a non-finite feature."""
    make_corpus(tmp_path, n=8, seconds=(1.0, 1.5))
    noisy = tone(1.0)
    noisy[100:110] = np.nan
    write_wav(str(tmp_path / 'nan.wav'), noisy, float_format=True, bits=32)
    with pytest.raises(NonFiniteAudio, match='nan.wav: 10 of 16000 samples are NaN or infinite'):
        load_audio(str(tmp_path / 'nan.wav'))
    rows = [{'audio_filepath': 'nan.wav', 'duration': 1.0, 'text': 'poison'}] + [
        {'audio_filepath': f'wav/{i:03d}.wav', 'duration': 1.0, 'text': f'utterance {i}'} for i in range(8)]
    manifest = write_manifest(tmp_path / 'm.jsonl', rows)
    loader = build_dataloader(cfg(), manifest, shuffle=False)
    with caplog.at_level(logging.WARNING, logger='megatron_salm_mtp.data'):
        batches = list(loader)
    assert all(np.isfinite(b['audio_features'].numpy()).all() for b in batches)
    assert loader.epoch_skip_counts[0] == {'non_finite_audio': 1}
    assert any('nan.wav' in r.getMessage() and 'non_finite_audio' in r.getMessage() for r in caplog.records)
    with pytest.raises(BadSampleError, match='nan.wav.*non_finite_audio'):
        list(build_dataloader(cfg(strict_data=True), manifest, shuffle=False))


def test_finite_samples_whose_features_overflow_are_skipped_too(tmp_path):
    """1e30 is a finite float32 sample, but its power overflows: the log-mel would be inf."""
    make_corpus(tmp_path, n=2, seconds=(1.0, 1.0))
    write_wav(str(tmp_path / 'huge.wav'), tone(1.0) * 1e30, float_format=True, bits=32)
    manifest = write_manifest(tmp_path / 'm.jsonl', [{'audio_filepath': 'huge.wav', 'text': 'loud'},
                                                      {'audio_filepath': 'wav/000.wav', 'text': 'fine'}])
    dataset = build_dataset(cfg(), manifest)
    sample = dataset[0]
    assert [(s.reason, s.where.split(' ')[0].endswith('huge.wav')) for s in sample['skipped']] == [
        ('non_finite_audio', True)]
    assert all(np.isfinite(f.numpy()).all() for f in sample['features'])


def test_a_file_no_decoder_recognises_says_so(tmp_path):
    pytest.importorskip('soundfile')
    fake = tmp_path / 'fake.mp3'
    fake.write_bytes(b'not really an mp3 file, just text')
    with pytest.raises(AudioError) as err:
        audio_info(str(fake))
    assert 'does not exist' not in str(err.value)
    assert "fake.mp3: unreadable audio (no decoder recognises its 33 bytes, which start b'not really an mp'" \
        in str(err.value)
    write_manifest(tmp_path / 'm.jsonl', [{'audio_filepath': 'fake.mp3', 'duration': 1.0, 'text': 'x'}])
    with pytest.raises(ValueError, match='unreadable_audio'):
        build_dataset(cfg(), str(tmp_path / 'm.jsonl'))
