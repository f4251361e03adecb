"""Synthetic speech corpus: ``python -m megatron_salm_mtp.data.synth --out DIR --num-utterances N``.

Writes ``DIR/audio/NNNNNN.wav`` (16 kHz, 16-bit mono) and ``DIR/{train,valid,test}.jsonl`` NeMo
manifests (relative paths, so the folder can move), plus ``DIR/corpus.json`` with the settings.
Each line carries ``subset`` (natural / wordlist / digits / names, see :mod:`.synth_text`) and the
voice, rate and pitch used.

Why per-utterance seeding: utterance ``i`` draws everything (subset, text, voice, rate, pitch,
noise) from ``Generator([seed, i])``, so it does not depend on the others: synthesis runs in
parallel, a corpus of N utterances is a prefix of one of 2N, and the same seed gives the same files
(for one version of the espeak-ng binary; with the espeakng-loader library the same texts, voices
and splits, but audio that differs slightly from run to run: see :mod:`.espeak`). An utterance
outside ``[min_seconds, max_seconds]`` is redrawn from the same generator. Split: ``i % 10 == 8`` valid, ``== 9`` test, else train.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from .audio import resample, write_wav
from .espeak import find_backend
from .frames import SAMPLE_RATE
from .synth_text import DEFAULT_MIX, choose_subset, sentence

VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+m3", "en-us+f2", "en+f4",
          "en-gb-x-rp+m7", "en-029+f3")
RATE_RANGE = (140, 190)  # words per minute
PITCH_RANGE = (30, 70)  # espeak's 0..99 scale


def _split(i: int) -> str:
    return {8: "valid", 9: "test"}.get(i % 10, "train")


def _add_noise(rng: np.random.Generator, audio: np.ndarray, snr_db: float) -> np.ndarray:
    """White noise at ``snr_db`` below the speech power (measured where the signal is active)."""
    active = audio[np.abs(audio) > 0.01 * np.abs(audio).max()] if audio.size else audio
    power = float(np.mean(active.astype(np.float64) ** 2)) if active.size else 0.0
    noise = rng.standard_normal(audio.shape) * np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return (audio + noise).astype(np.float32)


def make_utterance(backend, seed: int, i: int, noise_prob: float, snr_db: tuple[float, float],
                   min_seconds: float, max_seconds: float, mix=DEFAULT_MIX, max_tries: int = 20):
    """(16 kHz audio, manifest fields) of utterance ``i``."""
    rng = np.random.default_rng([seed, i])
    for _ in range(max_tries):
        subset = choose_subset(rng, mix)
        text = sentence(rng, subset)
        voice = VOICES[int(rng.integers(len(VOICES)))]
        rate = int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        noisy = bool(rng.random() < noise_prob)
        snr = float(rng.uniform(*snr_db))
        wav, sr = backend.synth(text, voice, rate, pitch)
        audio = resample(wav, sr, SAMPLE_RATE)
        seconds = len(audio) / SAMPLE_RATE
        if min_seconds <= seconds <= max_seconds:
            break
    else:
        raise RuntimeError(f"utterance {i}: no sentence within [{min_seconds}, {max_seconds}] s in {max_tries} tries")
    if noisy:
        audio = _add_noise(rng, audio, snr)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    fields = {"duration": round(seconds, 4), "text": text, "subset": subset, "lang": "en", "voice": voice,
              "rate": rate, "pitch": pitch, "noise_snr_db": round(snr, 1) if noisy else None}
    return audio, fields


def _write_utterance(engine, out: str, i: int, **settings) -> dict:
    audio, fields = make_utterance(engine, i=i, **settings)
    rel = f"audio/{i:06d}.wav"
    write_wav(os.path.join(out, rel), audio, SAMPLE_RATE)
    return {"audio_filepath": rel, **fields}


_process_engine = None  # one per worker process: the library backend keeps global state


def _start_process_engine(backend: str) -> None:
    global _process_engine
    # One torch thread per worker: with torch's default (every core) per process, N workers ran
    # N x cores resampling threads and synthesis crawled at ~1 utterance/s per process on a 64-core host.
    torch.set_num_threads(1)
    _process_engine = find_backend(backend)


def _write_in_process(out: str, settings: dict, i: int) -> dict:
    return _write_utterance(_process_engine, out, i, **settings)


def _synthesize_all(engine, backend: str, out: str, num_utterances: int, jobs: int | None, settings: dict):
    """Manifest rows in utterance order: threads for the binary backend, processes for the library
    one (not thread-safe) when ``jobs`` > 1."""
    if engine.thread_safe:
        with ThreadPoolExecutor(max_workers=jobs or min(8, (os.cpu_count() or 1) * 2)) as pool:
            return list(pool.map(lambda i: _write_utterance(engine, out, i, **settings), range(num_utterances)))
    if not jobs or jobs == 1:
        return [_write_utterance(engine, out, i, **settings) for i in range(num_utterances)]
    with ProcessPoolExecutor(max_workers=jobs, initializer=_start_process_engine, initargs=(backend,)) as pool:
        return list(pool.map(partial(_write_in_process, out, settings), range(num_utterances), chunksize=16))


def build_corpus(out: str, num_utterances: int, seed: int = 0, noise_prob: float = 0.25,
                 snr_db: tuple[float, float] = (15.0, 30.0), min_seconds: float = 1.0, max_seconds: float = 4.0,
                 backend: str = "auto", jobs: int | None = None) -> dict:
    """Write the corpus; returns the summary also saved as ``corpus.json``."""
    engine = find_backend(backend)
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)

    settings = dict(seed=seed, noise_prob=noise_prob, snr_db=snr_db, min_seconds=min_seconds,
                    max_seconds=max_seconds)
    start = time.perf_counter()
    rows = _synthesize_all(engine, backend, out, num_utterances, jobs, settings)
    splits = {name: [r for i, r in enumerate(rows) if _split(i) == name] for name in ("train", "valid", "test")}
    for name, split_rows in splits.items():
        with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for r in split_rows:
                f.write(json.dumps(r) + "\n")
    summary = {
        "num_utterances": num_utterances, "seed": seed, "noise_prob": noise_prob, "snr_db": list(snr_db),
        "min_seconds": min_seconds, "max_seconds": max_seconds, "backend": engine.name, "espeak": engine.version,
        "audio_reproducible": engine.deterministic,
        "sample_rate": SAMPLE_RATE, "splits": {k: len(v) for k, v in splits.items()},
        "subsets": {s: sum(r["subset"] == s for r in rows) for s in DEFAULT_MIX},
        "audio_seconds": round(sum(r["duration"] for r in rows), 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    with open(os.path.join(out, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in summary.items() if k != "wall_seconds"}, f, indent=2)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--num-utterances", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-prob", type=float, default=0.25, help="fraction of utterances with white noise")
    p.add_argument("--snr-db", type=float, nargs=2, default=(15.0, 30.0), metavar=("MIN", "MAX"))
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=4.0)
    p.add_argument("--backend", choices=("auto", "cli", "lib"), default="auto",
                   help="espeak-ng binary (cli), espeakng-loader (lib), or whichever is present (auto)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel synthesis: threads (binary backend) or processes (library backend)")
    a = p.parse_args(argv)
    s = build_corpus(a.out, a.num_utterances, a.seed, a.noise_prob, tuple(a.snr_db), a.min_seconds,
                     a.max_seconds, a.backend, a.jobs)
    print(f"wrote {s['num_utterances']} utterances ({s['audio_seconds']} s of audio) to {a.out} in "
          f"{s['wall_seconds']} s with {s['backend']} ({s['espeak']}): splits {s['splits']}, subsets {s['subsets']}")
    if not s['audio_reproducible']:
        print("note: the espeakng-loader library is not deterministic: another run gives the same texts with "
              "slightly different audio; install the espeak-ng binary for bit-reproducible corpora")
    return 0


if __name__ == "__main__":
    sys.exit(main())
