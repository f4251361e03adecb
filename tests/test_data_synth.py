"""Synthetic corpus: sentences, reproducibility, manifests read back, and the pipeline consuming it."""

import hashlib
import json
import os

import numpy as np
import pytest
from data_fixtures import espeak_corpus  # noqa: F401 (fixture)

from megatron_salm_mtp.data import synth_text
from megatron_salm_mtp.data.audio import audio_info
from megatron_salm_mtp.data.espeak import espeak_available
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
from megatron_salm_mtp.data.manifest import read_manifest
from megatron_salm_mtp.data.wordlist import WORDS

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng unavailable")


def test_sentences_are_deterministic_and_subset_shaped():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [synth_text.sentence(rng, synth_text.choose_subset(rng)) for _ in range(200)]

    a = draw(1)
    assert a == draw(1) and a != draw(2)
    rng = np.random.default_rng(0)
    assert all(w in WORDS for w in synth_text.wordlist(rng).split())
    d = synth_text.digits(rng, 5, 5).split()
    assert d[-5:] and all(x.isdigit() and len(x) == 1 for x in d[-5:])
    assert " " in synth_text.names(rng) and len(WORDS) >= 2000


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(folder, "audio"))):
        h.update(open(os.path.join(folder, "audio", name), "rb").read())
    for split in ("train", "valid", "test"):
        h.update(open(os.path.join(folder, f"{split}.jsonl"), "rb").read())
    return h.hexdigest()


@needs_espeak
def test_corpus_layout_and_manifests(espeak_corpus):
    summary = json.load(open(os.path.join(espeak_corpus, "corpus.json")))
    assert summary["splits"] == {"train": 32, "valid": 4, "test": 4}
    rows = [json.loads(line) for s in ("train", "valid", "test") for line in open(os.path.join(espeak_corpus, f"{s}.jsonl"))]
    assert {r["subset"] for r in rows} == set(synth_text.SUBSETS)
    for r in rows:
        info = audio_info(os.path.join(espeak_corpus, r["audio_filepath"]))
        assert info.sample_rate == 16000 and info.channels == 1
        assert 1.0 <= info.duration <= 4.0 and abs(info.duration - r["duration"]) < 1e-3
        assert r["text"] and not os.path.isabs(r["audio_filepath"])
    assert len(read_manifest(os.path.join(espeak_corpus, "valid.jsonl"))) == 4


@needs_espeak
def test_same_seed_same_bytes_prefix_property(tmp_path, espeak_corpus):
    from megatron_salm_mtp.data.synth import build_corpus

    build_corpus(str(tmp_path / "a"), 40, seed=3)
    assert digest(str(tmp_path / "a")) == digest(espeak_corpus)
    build_corpus(str(tmp_path / "b"), 10, seed=3)  # a smaller corpus is a prefix of the larger one
    for name in os.listdir(tmp_path / "b" / "audio"):
        assert open(tmp_path / "b" / "audio" / name, "rb").read() == open(os.path.join(espeak_corpus, "audio", name), "rb").read()
    build_corpus(str(tmp_path / "c"), 10, seed=4)
    assert open(tmp_path / "c" / "train.jsonl").read() != open(tmp_path / "b" / "train.jsonl").read()


@needs_espeak
def test_pipeline_consumes_the_corpus(espeak_corpus):
    cfg = DataConfig(seq_length=192, micro_batch_size=4, global_batch_size=8, max_duration=4.0)
    loader = build_dataloader(cfg, os.path.join(espeak_corpus, "train.jsonl"))
    batches = list(loader)
    assert len(batches) == 8 and loader.skip_counts() == {}
    assert all(b["loss_mask"].sum() > 0 and b["audio_features"].shape[0] == 4 for b in batches)


def test_library_backend_when_installed(tmp_path):
    pytest.importorskip("espeakng_loader")
    from megatron_salm_mtp.data.synth import build_corpus

    s = build_corpus(str(tmp_path), 6, seed=1, backend="lib")
    assert s["backend"] == "espeakng-loader library" and sum(s["splits"].values()) == 6
    assert s["audio_reproducible"] is False  # the library's waveforms vary from run to run
    rows = read_manifest(str(tmp_path / "train.jsonl"))
    assert all(1.0 <= audio_info(r.audios[0].value).duration <= 4.0 for r in rows)
    build_corpus(str(tmp_path / "again"), 6, seed=1, backend="lib")
    first, again = ([json.loads(line)["text"] for line in open(folder / "train.jsonl")]
                    for folder in (tmp_path, tmp_path / "again"))
    assert first == again
