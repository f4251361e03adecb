"""espeak-ng speech synthesis through the Debian binary or the PyPI ``espeakng-loader`` library.

``synth(text, voice, Prosody(...))`` sets rate, pitch, amplitude, word gap and pitch range per call;
``phonemes(text, voice)`` is what that voice says for the text, in espeak-ng's IPA (``--ipa``: one
line per clause, joined here with spaces), the target of a phoneme CTC loss.
``data_dir`` is the ``espeak-ng-data`` folder in use (``ESPEAK_DATA_PATH`` moves it), where
:mod:`.voices` checks that each voice exists; ``find_backend(..., path=P)`` makes the backend read
``P/espeak-ng-data`` instead (the corpus's synthetic accents: :mod:`.accents`).

Why two backends: CI and clusters with apt get ``espeak-ng`` (a subprocess per utterance, safe to
run in parallel threads); where apt is unavailable, ``espeakng-loader`` bundles ``libespeak-ng`` and
its data, driven here through ctypes in synchronous mode (one utterance at a time: the library keeps
global state). Both return mono float32 at espeak's native rate (22,050 Hz); resampling to 16 kHz
is the caller's job. Different espeak-ng versions may produce slightly different waveforms, so a
corpus is reproducible for a given version (``Synthesizer.version``) of the binary. The library is
not deterministic: the same text comes out a few samples longer or shorter, with other sample
values, from one call to the next and from one fresh process to the next (seen with espeakng-loader;
re-initialising or seeding libc's rand() does not help), so its corpora match in text, not in audio.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import struct
import subprocess
from xml.sax.saxutils import escape

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phonememode bit for IPA (else its ASCII names)
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7


@dataclasses.dataclass(frozen=True)
class Prosody:
    rate: int = 175  # words per minute
    pitch: int = 50  # 0..99
    amplitude: int = 100  # 0..200
    word_gap: int = 0  # extra pause between words, units of 10 ms
    pitch_range: int = 100  # percent of the voice's own intonation range (0: monotone)


class SynthesisError(RuntimeError):
    """espeak-ng failed on one text and voice (seen: a segfault on one of 80,000 utterances)."""


class EspeakUnavailable(RuntimeError):
    pass


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 mono of espeak-ng's ``--stdout`` WAV, whose size fields are placeholders."""
    if data[:4] != b'RIFF' or data[36:40] != b'data':
        raise RuntimeError('espeak-ng --stdout did not write the expected 44-byte WAV header')
    rate = struct.unpack('<I', data[24:28])[0]
    pcm = np.frombuffer(data, dtype='<i2', offset=44, count=(len(data) - 44) // 2)
    return pcm.astype(np.float32) / 32768.0, rate


def _ssml(text: str, pitch_range: int = 100) -> str:
    """SSML carries the pitch range, which has no command-line flag; it also keeps a text that
    starts with "-" from reading as an option."""
    return f'<prosody range="{pitch_range}%">{escape(text)}</prosody>'


def _join_clauses(lines) -> str:
    return ' '.join(line.strip() for line in lines if line.strip())


class _CliBackend:
    name = 'espeak-ng binary'
    deterministic = True
    thread_safe = True

    def __init__(self, binary: str, path: str | None = None):
        self.binary, self.path_args = binary, ['--path', path] if path else []
        out = subprocess.run([binary, '--version'], capture_output=True, text=True, check=True).stdout
        self.version = out.split('Data at')[0].strip()
        self.data_dir = out.split('Data at:')[1].strip() if 'Data at:' in out else None

    def synth(self, text: str, voice: str, prosody: Prosody = Prosody()) -> tuple[np.ndarray, int]:
        args = ['-s', str(prosody.rate), '-p', str(prosody.pitch), '-a', str(prosody.amplitude),
                '-g', str(prosody.word_gap), '--stdout', _ssml(text, prosody.pitch_range)]
        return _wav_samples(self._run(args, text, voice))

    def phonemes(self, text: str, voice: str) -> str:
        # The same SSML as synth's at the default pitch range: prosody changes no phoneme.
        return _join_clauses(self._run(['-q', '--ipa', _ssml(text)], text, voice).decode().splitlines())

    def _run(self, args: list[str], text: str, voice: str) -> bytes:
        done = subprocess.run([self.binary, *self.path_args, '-m', '-v', voice, *args], capture_output=True)
        if done.returncode != 0:
            raise SynthesisError(f"espeak-ng failed ({done.returncode}) for voice {voice!r} on {text!r}: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout


class _LibBackend:
    name = 'espeakng-loader library'
    thread_safe = False
    deterministic = False

    def __init__(self, path: str | None = None):
        try:
            import espeakng_loader
        except ImportError as e:
            raise EspeakUnavailable('neither the espeak-ng binary nor the espeakng-loader package is installed') from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.data_dir = espeakng_loader.get_data_path()
        data_parent = path or os.path.dirname(self.data_dir)  # the folder holding espeak-ng-data
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0)
        if self.rate <= 0:
            raise EspeakUnavailable(f'espeak_Initialize failed ({self.rate})')
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, _events):
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = proto(collect)  # keep a reference: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.version = 'espeak-ng ' + lib.espeak_Info(None).decode()
        self._lib = lib

    def _set_voice(self, voice: str) -> None:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f'espeak-ng has no voice {voice!r}')

    def synth(self, text: str, voice: str, prosody: Prosody = Prosody()) -> tuple[np.ndarray, int]:
        lib = self._lib
        self._set_voice(voice)
        for param, value in ((_PARAM_RATE, prosody.rate), (_PARAM_PITCH, prosody.pitch),
                             (_PARAM_VOLUME, prosody.amplitude), (_PARAM_WORDGAP, prosody.word_gap),
                             (_PARAM_RANGE, min(100, prosody.pitch_range // 2))):  # the library's 50 is normal
            lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        raw = text.encode('utf-8') + b'\0'
        err = lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise SynthesisError(f'espeak_Synth failed ({err}) on {text!r}')
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0, self.rate

    def phonemes(self, text: str, voice: str) -> str:
        self._set_voice(voice)
        raw = ctypes.create_string_buffer(text.encode('utf-8'))
        cursor = ctypes.c_void_p(ctypes.addressof(raw))
        clauses = []
        while cursor.value:  # one clause per call; the library moves the cursor on, to NULL at the end
            clause = self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _PHONEMES_IPA)
            if clause is None:
                raise SynthesisError(f'espeak_TextToPhonemes returned nothing for voice {voice!r} on {text!r}')
            clauses.append(clause.decode('utf-8'))
        return _join_clauses(clauses)


def find_backend(prefer: str = 'auto', path: str | None = None):
    """``auto``: the binary when on PATH, else the library; ``cli`` / ``lib`` force one. ``path``:
    the folder holding the ``espeak-ng-data`` to read (default: the backend's own)."""
    if prefer not in ('auto', 'cli', 'lib'):
        raise ValueError(f'backend must be auto, cli or lib, got {prefer!r}')
    binary = shutil.which('espeak-ng')
    if prefer == 'cli' or (prefer == 'auto' and binary):
        if not binary:
            raise EspeakUnavailable('espeak-ng binary not found on PATH (apt-get install espeak-ng)')
        return _CliBackend(binary, path)
    return _LibBackend(path)


def espeak_available() -> bool:
    try:
        find_backend()
    except (EspeakUnavailable, OSError):
        return False
    return True
