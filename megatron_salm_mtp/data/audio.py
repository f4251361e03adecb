"""Audio loading through ``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3 and the other encodings
real corpora hold), with a WAV reader of our own as the fallback without it; resampled to 16 kHz.

Why our own RIFF parser, where ``soundfile`` is missing: the stdlib ``wave`` module reads integer
PCM only, and users' corpora hold float32 and 24-bit WAVs too. Either way :func:`audio_info` reads
the header alone (sample rate, channels, frames), which the dataset uses to vet a manifest at start
without decoding audio, and a file shorter than its header says is an error, never a short clip.

Corpora come at 8/22.05/44.1/48 kHz: :func:`load_audio` resamples to the encoder's 16 kHz
(:mod:`.resample`). Samples that are NaN or infinite (float WAVs can hold them) are an error
naming the file, never a silently poisoned batch.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .frames import SAMPLE_RATE
from .resample import resample, resampled_length

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_STREAMING_SIZES = (0, 0xFFFFFFFF)  # written by tools that could not seek back to fix the header
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 1_000_000  # outside: a broken header, not speech


class AudioError(Exception):
    """An audio file that cannot be read (missing, truncated, unsupported encoding)."""


class AudioFileNotFound(AudioError):
    """The path does not name a file."""


class TruncatedWav(AudioError):
    """A WAV holding fewer bytes than its header announces (a copy cut short). libsndfile reads
    what is there without a word, so the header is checked beside it."""


class _UnsupportedWav(AudioError):
    """A well-formed WAV in an encoding the parser does not decode (ADPCM, A-law...)."""


class NonFiniteAudio(AudioError):
    """Decoded samples that are NaN or infinite (float WAVs can hold them): they would poison the
    whole batch's loss."""


def _check_rate(rate: int, name: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f'{name}: implausible sample rate {rate} Hz (expected '
                         f'{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})')


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    num_frames: int  # samples per channel in the whole file

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


@dataclass(frozen=True)
class _WavLayout:
    info: AudioInfo
    format_tag: int
    bits: int
    block_align: int
    data_offset: int


def _parse_wav_header(f, file_size: int, name: str) -> _WavLayout:
    """Walk the RIFF chunks up to ``data``; raise :class:`AudioError` on anything inconsistent."""
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b'RIFF', b'RIFX') or head[8:12] != b'WAVE':
        raise AudioError(f'{name}: not a RIFF/WAVE file')
    if head[:4] == b'RIFX':
        raise _UnsupportedWav(f'{name}: big-endian RIFX WAV is not supported')
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise TruncatedWav(f'{name}: truncated WAV (no data chunk)')
        cid, size = chunk[:4], struct.unpack('<I', chunk[4:])[0]
        if cid == b'fmt ':
            body = f.read(size)
            if len(body) < 16:
                raise AudioError(f'{name}: truncated fmt chunk')
            tag, channels, rate, _, block_align, bits = struct.unpack('<HHIIHH', body[:16])
            if tag == _WAVE_FORMAT_EXTENSIBLE:
                if len(body) < 26:
                    raise AudioError(f'{name}: truncated WAVE_FORMAT_EXTENSIBLE header')
                tag = struct.unpack('<H', body[24:26])[0]  # first two bytes of the sub-format GUID
            fmt = (tag, channels, rate, block_align, bits)
            if size % 2:
                f.read(1)
        elif cid == b'data':
            if fmt is None:
                raise AudioError(f'{name}: data chunk before fmt chunk')
            tag, channels, rate, block_align, bits = fmt
            if channels < 1 or block_align != channels * ((bits + 7) // 8):
                raise AudioError(f'{name}: inconsistent fmt chunk (channels={channels}, rate={rate}, bits={bits})')
            _check_rate(rate, name)
            if (tag, bits) not in ((_WAVE_FORMAT_PCM, 8), (_WAVE_FORMAT_PCM, 16), (_WAVE_FORMAT_PCM, 24),
                                   (_WAVE_FORMAT_PCM, 32), (_WAVE_FORMAT_IEEE_FLOAT, 32),
                                   (_WAVE_FORMAT_IEEE_FLOAT, 64)):
                raise _UnsupportedWav(f'{name}: unsupported WAV encoding (format tag {tag:#x}, {bits} bits)')
            offset = f.tell()
            available = file_size - offset
            if size in _STREAMING_SIZES:
                size = available - available % block_align
            elif size > available:
                raise TruncatedWav(f'{name}: truncated WAV (header says {size} data bytes, file has {available})')
            return _WavLayout(AudioInfo(rate, channels, size // block_align), tag, bits, block_align, offset)
        else:
            f.seek(size + (size % 2), os.SEEK_CUR)


def _decode_pcm(raw: bytes, tag: int, bits: int, channels: int) -> np.ndarray:
    """Bytes of interleaved samples -> float32 [frames, channels] in [-1, 1]."""
    if tag == _WAVE_FORMAT_IEEE_FLOAT:
        x = np.frombuffer(raw, dtype='<f4' if bits == 32 else '<f8').astype(np.float32)
    elif bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 16:
        x = np.frombuffer(raw, dtype='<i2').astype(np.float32) / 32768.0
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = (np.frombuffer(raw, dtype='<i4').astype(np.float64) / float(1 << 31)).astype(np.float32)
    return x.reshape(-1, channels)


def _is_wav(path: str) -> bool:
    with open(path, 'rb') as f:
        head = f.read(12)
    return head[:4] in (b'RIFF', b'RIFX') and head[8:12] == b'WAVE'


def _check_not_truncated(path: str) -> None:
    """A WAV that libsndfile will read: refuse it when it is shorter than its header says (the
    header's other oddities, and encodings the parser does not know, are libsndfile's to judge)."""
    if not _is_wav(path):
        return
    try:
        with open(path, 'rb') as f:
            _parse_wav_header(f, os.path.getsize(path), path)
    except TruncatedWav:
        raise
    except AudioError:
        pass


def _wav_layout(f, path: str) -> _WavLayout:
    """The header of a WAV read without soundfile; anything else needs soundfile."""
    if not _is_wav(path):
        raise AudioError(f"{path}: not a WAV file, and reading other formats needs the 'soundfile' package")
    return _parse_wav_header(f, os.path.getsize(path), path)


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError):
        return None
    return soundfile


def _soundfile_error(path: str, err: Exception) -> AudioError:
    """libsndfile says "File does not exist" of any existing file it cannot make sense of (a text
    file named .mp3): say what is wrong instead."""
    text = str(err)
    if 'does not exist' in text:
        with open(path, 'rb') as f:
            head = f.read(16)
        text = f'no decoder recognises its {os.path.getsize(path)} bytes, which start {head!r}'
    return AudioError(f'{path}: unreadable audio ({text})')


def audio_info(path: str) -> AudioInfo:
    """Sample rate, channels and length from the header only (cheap: used to vet manifests)."""
    if not os.path.isfile(path):
        raise AudioFileNotFound(f'{path}: file not found')
    sf = _soundfile()
    if sf is None:
        with open(path, 'rb') as f:
            return _wav_layout(f, path).info
    _check_not_truncated(path)
    try:
        i = sf.info(path)
    except Exception as e:  # soundfile raises its own error types; keep the message
        raise _soundfile_error(path, e) from e
    _check_rate(int(i.samplerate), path)
    return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames))


def slice_frames(num_frames: int, sample_rate: int, offset: float | None, duration: float | None) -> tuple[int, int]:
    """``[start, stop)`` source frames for an ``offset``/``duration`` in seconds (clipped to the file)."""
    start = min(num_frames, max(0, round((offset or 0.0) * sample_rate)))
    stop = num_frames if duration is None else min(num_frames, start + max(0, round(duration * sample_rate)))
    return start, stop


def read_audio(path: str, offset: float | None = None, duration: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``[offset, offset + duration)`` seconds as float32 [frames, channels] at the file's rate."""
    if not os.path.isfile(path):
        raise AudioFileNotFound(f'{path}: file not found')
    sf = _soundfile()
    if sf is not None:
        _check_not_truncated(path)
        return _read_soundfile(sf, path, offset, duration)
    with open(path, 'rb') as f:
        lay = _wav_layout(f, path)
        start, stop = slice_frames(lay.info.num_frames, lay.info.sample_rate, offset, duration)
        f.seek(lay.data_offset + start * lay.block_align)
        raw = f.read((stop - start) * lay.block_align)
    if len(raw) != (stop - start) * lay.block_align:
        raise AudioError(f'{path}: truncated WAV (short read)')
    return _decode_pcm(raw, lay.format_tag, lay.bits, lay.info.channels), lay.info.sample_rate


def _read_soundfile(sf, path: str, offset: float | None, duration: float | None) -> tuple[np.ndarray, int]:
    try:
        info = sf.info(path)
        start, stop = slice_frames(int(info.frames), int(info.samplerate), offset, duration)
        data, rate = sf.read(path, start=start, stop=stop, dtype='float32', always_2d=True)
    except Exception as e:
        raise _soundfile_error(path, e) from e
    _check_rate(int(rate), path)
    if len(data) != stop - start:  # libsndfile returns what is there of a cut file
        raise AudioError(f'{path}: truncated ({len(data)} of the {stop - start} frames its header announces)')
    return data, int(rate)


def load_audio(path: str, offset: float | None = None, duration: float | None = None,
               target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``target_rate``: the waveform the feature extractor sees."""
    data, rate = read_audio(path, offset, duration)
    mono = data[:, 0].copy()
    for c in range(1, data.shape[1]):  # channel by channel: a strided mean over axis 1 is 10x slower
        mono += data[:, c]
    if data.shape[1] > 1:
        mono /= data.shape[1]
    bad = len(mono) - int(np.isfinite(mono).sum())
    if bad:
        raise NonFiniteAudio(f'{path}: {bad} of {len(mono)} samples are NaN or infinite')
    return resample(mono, rate, target_rate)


def load_num_samples(info: AudioInfo, offset: float | None, duration: float | None,
                     target_rate: int = SAMPLE_RATE) -> int:
    """Samples :func:`load_audio` will return, known from the header alone."""
    start, stop = slice_frames(info.num_frames, info.sample_rate, offset, duration)
    return resampled_length(stop - start, info.sample_rate, target_rate)


def write_wav(path: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, bits: int = 16,
              float_format: bool = False) -> None:
    """Write [frames] or [frames, channels] float audio as PCM16/24/32 or float32 WAV (tests, synth)."""
    a = np.asarray(audio, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    channels = a.shape[1]
    if float_format:
        if bits != 32:
            raise ValueError('float WAV is written as 32-bit')
        payload, tag = a.astype('<f4').tobytes(), _WAVE_FORMAT_IEEE_FLOAT
    else:
        tag = _WAVE_FORMAT_PCM
        scale = float(1 << (bits - 1))
        q = np.clip(np.round(a * scale), -scale, scale - 1).astype(np.int64)
        if bits == 16:
            payload = q.astype('<i2').tobytes()
        elif bits == 32:
            payload = q.astype('<i4').tobytes()
        elif bits == 24:
            u = (q & 0xFFFFFF).astype('<u4').reshape(-1, 1).view(np.uint8)[:, :3]
            payload = np.ascontiguousarray(u).tobytes()
        else:
            raise ValueError(f'unsupported bits {bits}')
    block = channels * bits // 8
    fmt = struct.pack('<HHIIHH', tag, channels, sample_rate, sample_rate * block, block, bits)
    with open(path, 'wb') as f:
        f.write(b'RIFF' + struct.pack('<I', 4 + 8 + len(fmt) + 8 + len(payload)) + b'WAVE')
        f.write(b'fmt ' + struct.pack('<I', len(fmt)) + fmt)
        f.write(b'data' + struct.pack('<I', len(payload)) + payload)
