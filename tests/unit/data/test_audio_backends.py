"""Audio goes through soundfile first (every format libsndfile reads, MP3 included); the WAV
reader of our own is the fallback without it and decodes the same samples."""

import numpy as np
import pytest

from megatron_salm_mtp.data import audio
from megatron_salm_mtp.data.audio import AudioError, audio_info, load_audio, read_audio, write_wav
from tests.support.data_fixtures import tone

soundfile = pytest.importorskip('soundfile')


@pytest.fixture
def without_soundfile(monkeypatch):
    monkeypatch.setattr(audio, '_soundfile', lambda: None)


@pytest.mark.parametrize('bits, float_format', [(16, False), (24, False), (32, True)])
def test_wav_fallback_decodes_what_soundfile_does(tmp_path, monkeypatch, bits, float_format):
    path = str(tmp_path / 'a.wav')
    write_wav(path, np.stack([tone(0.6, seed=1), tone(0.6, freq=300, seed=2)], axis=1) * 0.5, 22050, bits,
              float_format)
    through_soundfile, rate = read_audio(path, offset=0.1, duration=0.3)
    info = audio_info(path)
    monkeypatch.setattr(audio, '_soundfile', lambda: None)
    through_parser, parser_rate = read_audio(path, offset=0.1, duration=0.3)
    assert rate == parser_rate == 22050 and through_soundfile.shape == (round(0.3 * 22050), 2)
    assert np.array_equal(through_soundfile, through_parser)
    assert audio_info(path) == info


def test_soundfile_reads_a_wav_encoding_the_parser_does_not(tmp_path, without_soundfile):
    path = str(tmp_path / 'alaw.wav')
    soundfile.write(path, tone(0.5), 16000, subtype='ALAW')
    with pytest.raises(AudioError, match='unsupported WAV encoding'):
        read_audio(path)


def test_alaw_wav_through_soundfile(tmp_path):
    path = str(tmp_path / 'alaw.wav')
    soundfile.write(path, tone(0.5), 16000, subtype='ALAW')
    wave = load_audio(path)
    assert len(wave) == 8000 and np.corrcoef(wave, tone(0.5))[0, 1] > 0.99


@pytest.mark.skipif('MP3' not in soundfile.available_formats(), reason='libsndfile without MP3')
def test_mp3_is_read_and_resampled(tmp_path):
    path = str(tmp_path / 'a.mp3')
    soundfile.write(path, tone(1.0, rate=44100, freq=440), 44100, format='MP3')
    wave = load_audio(path)  # 16 kHz; the encoder pads a few ms
    assert abs(len(wave) - 16000) < 0.1 * 16000
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


def test_without_soundfile_other_formats_are_named(tmp_path, without_soundfile):
    path = str(tmp_path / 'a.flac')
    soundfile.write(path, tone(0.2), 16000, format='FLAC')
    for read in (audio_info, read_audio):
        with pytest.raises(AudioError, match="a.flac: not a WAV file, and reading other formats needs the 'soundfile'"):
            read(path)


def test_truncated_wav_is_refused_through_soundfile_too(tmp_path):
    """libsndfile reads what is left of a cut WAV; the header says more, so it is an error."""
    path = str(tmp_path / 'cut.wav')
    write_wav(path, tone(1.0))
    with open(path, 'r+b') as f:
        f.truncate(12000)
    assert len(soundfile.read(path)[0]) < 16000  # what libsndfile alone would hand over
    for read in (audio_info, read_audio):
        with pytest.raises(AudioError, match='truncated WAV'):
            read(path)


def test_wav_is_decoded_by_soundfile_when_installed(tmp_path, monkeypatch):
    path = str(tmp_path / 'a.wav')
    write_wav(path, tone(0.3))
    calls, real_read = [], soundfile.read
    monkeypatch.setattr(soundfile, 'read', lambda file, *args, **kwargs: calls.append(file) or real_read(file, *args,
                                                                                                       **kwargs))
    read_audio(path)
    assert calls == [path]
