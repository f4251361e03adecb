"""WAV decoding (every PCM/float layout, multi-channel), slicing, resampling quality, bad files."""

import os
import struct

import numpy as np
import pytest

from megatron_salm_mtp.data.audio import (
    AudioError,
    audio_info,
    load_audio,
    load_num_samples,
    read_audio,
    resample,
    resampled_length,
    write_wav,
)
from tests.support.data_fixtures import tone


@pytest.mark.parametrize('bits,float_format,tol', [(16, False, 1 / 32768), (24, False, 1 / 2**23),
                                                   (32, False, 1 / 2**31), (32, True, 1e-7)])
def test_wav_formats_round_trip(tmp_path, bits, float_format, tol):
    x = tone(0.5, 16000, channels=2)
    p = str(tmp_path / 'a.wav')
    write_wav(p, x, 16000, bits=bits, float_format=float_format)
    data, rate = read_audio(p)
    assert rate == 16000 and data.shape == x.shape and data.dtype == np.float32
    assert np.abs(data - x).max() <= tol * 1.01 + 1e-7
    info = audio_info(p)
    assert (info.sample_rate, info.channels, info.num_frames) == (16000, 2, len(x))


def test_stdlib_wave_agrees_on_pcm16(tmp_path):
    import wave

    x = tone(0.3)
    p = str(tmp_path / 'a.wav')
    write_wav(p, x)
    with wave.open(p) as w:
        ref = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2') / 32768.0
    np.testing.assert_array_equal(read_audio(p)[0][:, 0], ref.astype(np.float32))


def test_multichannel_is_downmixed_to_mean(tmp_path):
    x = tone(0.5, channels=3)
    p = str(tmp_path / 'a.wav')
    write_wav(p, x, bits=32, float_format=True)
    np.testing.assert_allclose(load_audio(p), x.mean(axis=1), atol=1e-6)


def test_offset_and_duration_slice(tmp_path):
    x = np.arange(48000, dtype=np.float32) / 48000 - 0.5
    p = str(tmp_path / 'a.wav')
    write_wav(p, x, 16000, bits=32, float_format=True)
    y = load_audio(p, offset=0.5, duration=1.25)
    np.testing.assert_array_equal(y, x[8000:8000 + 20000])
    assert load_num_samples(audio_info(p), 0.5, 1.25) == 20000
    assert len(load_audio(p, offset=2.5, duration=10.0)) == 8000  # clipped at the end of the file


@pytest.mark.parametrize('rate', [8000, 22050, 44100, 48000])
def test_resampler_keeps_in_band_tones(rate):
    t = np.arange(rate * 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 3100 * t)).astype(np.float32)
    y = resample(x, rate, 16000)
    assert len(y) == resampled_length(len(x), rate, 16000) == 32000
    u = np.arange(len(y)) / 16000
    ref = 0.5 * np.sin(2 * np.pi * 1000 * u) + 0.3 * np.sin(2 * np.pi * 3100 * u)
    inner = slice(500, -500)  # away from the zero-padded edges
    assert np.abs(y[inner] - ref[inner]).max() < 1e-3


@pytest.mark.parametrize('rate', [22050, 44100, 48000])
def test_resampler_rejects_aliases(rate):
    """A 9.5 kHz tone is above the new Nyquist (8 kHz): a naive resampler folds it to 6.5 kHz."""
    t = np.arange(rate) / rate
    y = resample(np.sin(2 * np.pi * 9500 * t).astype(np.float32), rate, 16000)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 1e-3  # input RMS is 0.71: more than 57 dB down
    naive = np.interp(np.arange(16000) / 16000, t, np.sin(2 * np.pi * 9500 * t))
    assert np.sqrt(np.mean(naive ** 2)) > 0.3


def test_resample_to_16k_from_file(tmp_path):
    p = str(tmp_path / 'a.wav')
    write_wav(p, tone(1.0, 44100), 44100, bits=24)
    y = load_audio(p)
    assert len(y) == 16000 and load_num_samples(audio_info(p), None, None) == 16000


def test_truncated_wav_is_an_error(tmp_path):
    p = str(tmp_path / 'a.wav')
    write_wav(p, tone(1.0))
    with open(p, 'r+b') as f:
        f.truncate(os.path.getsize(p) - 1000)
    for fn in (audio_info, read_audio):
        with pytest.raises(AudioError, match='truncated'):
            fn(p)


def test_streaming_header_reads_to_end(tmp_path):
    """Tools that cannot seek back write 0xFFFFFFFF as the data size: read what is there."""
    p = str(tmp_path / 'a.wav')
    write_wav(p, tone(0.25))
    raw = bytearray(open(p, 'rb').read())
    i = raw.index(b'data')
    raw[i + 4:i + 8] = struct.pack('<I', 0xFFFFFFFF)
    open(p, 'wb').write(bytes(raw))
    assert audio_info(p).num_frames == 4000


@pytest.mark.parametrize('content', [b'', b'RIFF\x00\x00', b'not audio at all' * 10])
def test_garbage_and_missing_files(tmp_path, content):
    p = str(tmp_path / 'bad.wav')
    open(p, 'wb').write(content)
    with pytest.raises(AudioError):
        audio_info(p)
    with pytest.raises(AudioError, match='file not found'):
        read_audio(str(tmp_path / 'nope.wav'))


def test_flac_through_soundfile(tmp_path):
    sf = pytest.importorskip('soundfile')
    x = tone(0.5, 22050)
    p = str(tmp_path / 'a.flac')
    sf.write(p, x, 22050, subtype='PCM_16')
    assert audio_info(p).num_frames == len(x)
    y = load_audio(p, offset=0.1, duration=0.2)
    ref = resample(np.round(x[2205:2205 + 4410] * 32767) / 32768, 22050, 16000)
    assert len(y) == 3200 and np.abs(y - ref).max() < 1e-3


def test_ogg_vorbis_through_soundfile(tmp_path):
    sf = pytest.importorskip('soundfile')
    if 'OGG' not in sf.available_formats():
        pytest.skip('libsndfile built without OGG')
    x = tone(1.0, 48000)
    p = str(tmp_path / 'a.ogg')
    sf.write(p, x, 48000, format='OGG', subtype='VORBIS')
    y = load_audio(p)
    assert abs(len(y) - 16000) <= 16 and audio_info(p).sample_rate == 48000
    spectrum = np.abs(np.fft.rfft(y[1000:15000]))
    assert abs(np.argmax(spectrum) * 16000 / 14000 - 440) < 5  # the tone survives lossy coding + resampling
