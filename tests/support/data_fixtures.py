"""Shared helpers and fixtures for the data tests (tests/unit/data import from here).

Audio made here is deterministic noise-and-tone WAV written with the package's own writer, so the
tests need no espeak; the espeak-backed corpus fixture skips cleanly where espeak is unavailable.
"""

import json
import os
import shutil

import numpy as np
import pytest

from megatron_salm_mtp.data.audio import write_wav

TOKENIZER_CORPUS = ['the quick brown fox jumps over the lazy dog', 'transcribe the audio please',
                    'four seven one nine', 'hello world', 'speech recognition with large language models'] * 20


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A tone plus a little noise: non-silent, so log-mel values are not all clamped."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write_manifest(path, rows) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
    return str(path)


def make_corpus(folder, n: int = 12, seconds=(1.0, 2.5), rate: int = 16000, text: str = 'utterance {i}') -> str:
    """``n`` WAVs with lengths spread over ``seconds`` and a manifest ``train.jsonl`` (relative paths)."""
    os.makedirs(os.path.join(folder, 'wav'), exist_ok=True)
    rows = []
    for i in range(n):
        sec = seconds[0] + (seconds[1] - seconds[0]) * i / max(1, n - 1)
        write_wav(os.path.join(folder, 'wav', f'{i:03d}.wav'), tone(sec, rate, 200 + 20 * i, seed=i), rate)
        rows.append({'audio_filepath': f'wav/{i:03d}.wav', 'duration': sec, 'text': text.format(i=i)})
    return write_manifest(os.path.join(folder, 'train.jsonl'), rows)


def make_train_valid_corpus(folder, n: int) -> str:
    """``make_corpus`` whose validation manifest repeats the training one; returns the folder."""
    make_corpus(folder, n=n)
    shutil.copy(os.path.join(folder, 'train.jsonl'), os.path.join(folder, 'valid.jsonl'))
    return str(folder)


@pytest.fixture
def tiny_corpus(tmp_path):
    """Manifest path of 12 good utterances, 1-2.5 s, 16 kHz."""
    return make_corpus(tmp_path)


@pytest.fixture(scope='session')
def espeak_corpus(tmp_path_factory):
    """A 40-utterance synthetic corpus of 1-3 s utterances (skips without espeak-ng or WordNet)."""
    from megatron_salm_mtp.tools.corpus.espeak import espeak_available
    from megatron_salm_mtp.tools.corpus.synth import build_corpus
    from megatron_salm_mtp.tools.corpus.text_source import default_text_source

    if not espeak_available():
        pytest.skip('espeak-ng unavailable (apt-get install espeak-ng, or pip install espeakng-loader)')
    if default_text_source() is None:
        pytest.skip('WordNet unavailable (apt-get install wordnet-base)')
    out = tmp_path_factory.mktemp('synth')
    build_corpus(str(out), 40, seed=3, max_seconds=3.0)
    return str(out)


def hf_tokenizer_json(tmp_path, specials, config=None):
    """A byte-level BPE tokenizer.json trained on TOKENIZER_CORPUS (skips without ``tokenizers``)."""
    tokenizers = pytest.importorskip('tokenizers')
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / 'tokenizer.json'
    tk.save(str(path))
    if config:
        (tmp_path / 'tokenizer_config.json').write_text(json.dumps(config))
    return path

