"""Synthetic speech corpus: ``python -m megatron_salm_mtp.tools.corpus.synth --out DIR --num-utterances N``.

Version 2. Writes ``DIR/audio/NNNNNN.wav`` (16 kHz, 16-bit mono), the NeMo manifests
``DIR/{train,valid,test,test_unseen}.jsonl`` (relative paths, so the folder can move) and
``DIR/corpus.json`` (settings, voices and distinct words per split). Each line carries ``subset``
(natural / wordlist / digits / names, see :mod:`.synth_text`), the voice, its prosody, the
augmentation applied and ``phonemes``: what the voice said, as espeak-ng's IPA of the synthesised
text (``espeak-ng -v VOICE -q --ipa TEXT``, clause lines joined by spaces, stress marks kept), for a
phoneme CTC target that follows each accent's letter-to-sound rules.

- Text: real English from WordNet (``--text-source``, see :mod:`.text_source`), ~45,000 lexicon words.
  ``--subsets`` keeps some of the four subsets (``digits``: a small-vocabulary corpus, the CPU twin's).
- Voices: 8 English espeak-ng voices x 83 variants (see :mod:`.voices`); rate, pitch, amplitude,
  word gap and pitch range drawn per utterance. ``--synthetic-accents K`` adds K accents recombined
  from the training accents' voice files to the train split's voices (:mod:`.accents`); the other
  splits are the same as without them, utterance for utterance.
- Augmentation: room reverberation and white / pink / brown noise on a fraction (:mod:`.augment`).
- Durations: a log-normal around 4.5 s (most 2-10 s, a tail to ``--max-seconds``), natural sentences
  joined to reach it; an utterance outside ``[--min-seconds, --max-seconds]`` is redrawn.
- Splits by index: ``i % 10`` 0-6 train, 7 valid, 8 test (seen voices, unseen texts), 9
  ``test_unseen`` (voices, texts, word-list words and names that train never contains).

Why per-utterance seeding: utterance ``i`` draws everything from ``Generator([seed, i])``, so it does
not depend on the others: synthesis runs in parallel, a corpus of N utterances is a prefix of one of
2N, and the same seed gives the same files (for one espeak-ng binary and one text source; with the
espeakng-loader library the same texts, voices and splits, but audio that differs slightly from run
to run: see :mod:`.espeak`).

Speed with the binary backend: ~28 ms of CPU per utterance (median 4.5 s of audio; espeak-ng ~10 ms
for the audio and ~11 ms for the ``phonemes``, a second call that costs mostly espeak-ng's start-up;
text, resampling, augmentation and writing ~7 ms), measured over 400 utterances on 2 cores in
threads and in processes alike: ~70 utterances/s on 2 free cores, and 100,000 utterances in about
3.5 minutes on 16 (processes from ``PROCESS_POOL_MIN`` utterances on, so the GIL does not cap them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from ...data.audio import write_wav
from ...data.frames import SAMPLE_RATE
from ...data.progress import Progress
from .accents import AccentError, add_accents
from .augment import NOISE_COLOURS, add_noise, reverberate, room_impulse_response
from .espeak import Prosody, SynthesisError, find_backend
from .polyphase import resample
from .synth_summary import summarize
from .synth_text import DEFAULT_MIX, SPLITS, SUBSETS, SplitTexts, choose_subset, split_texts, utterance_text
from .text_clean import transcript
from .text_source import TextSourceError, default_text_source, load_text_source
from .voices import corpus_voices, voice_parts

logger = logging.getLogger(__name__)

CORPUS_VERSION = 2
RATE_RANGE = (115, 210)  # words per minute
PITCH_RANGE = (25, 75)  # espeak's 0..99 scale
AMPLITUDE_RANGE = (40, 100)  # espeak's 0..200 scale (100 normal); louder, more variants clip
INTONATION_RANGE = (40, 180)  # percent of the voice's pitch range
WORD_GAP_PROB, WORD_GAP_MAX = 0.3, 6  # extra pause between words, units of 10 ms
MEDIAN_SECONDS, SIGMA_LOG_SECONDS = 4.5, 0.55
PAD_SECONDS = 0.25  # silence up to this long before and after the speech
PROCESS_POOL_MIN = 2000
PROGRESS_SECONDS = 10.0  # a progress line at most this often (stderr)
MAX_SYNTHETIC_ACCENTS = 99
PHONEMES = 'espeak-ng --ipa'  # corpus.json: how each line's "phonemes" were made


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    seed: int = 0
    min_seconds: float = 1.0
    max_seconds: float = 20.0
    noise_prob: float = 0.3
    snr_db: tuple[float, float] = (5.0, 30.0)
    reverb_prob: float = 0.2
    rt60: tuple[float, float] = (0.2, 0.9)
    text_subsets: tuple[str, ...] = SUBSETS  # --subsets: drawn with their DEFAULT_MIX shares, renormalised
    synthetic_accents: int = 0  # --synthetic-accents: train-only accents (accents.py)

    def validate(self) -> None:
        checks = [(0 < self.min_seconds and 1.5 * self.min_seconds <= self.max_seconds,
                   f'--min-seconds {self.min_seconds} must be positive and --max-seconds {self.max_seconds} '
                   'at least 1.5 times it'),
                  (0 <= self.noise_prob <= 1, f'--noise-prob must be in [0, 1], got {self.noise_prob}'),
                  (0 <= self.reverb_prob <= 1, f'--reverb-prob must be in [0, 1], got {self.reverb_prob}'),
                  (self.snr_db[0] <= self.snr_db[1], f'--snr-db MIN MAX: {self.snr_db[0]} > {self.snr_db[1]}'),
                  (0 < self.rt60[0] <= self.rt60[1], f'--rt60 MIN MAX must be positive and ordered, got {self.rt60}'),
                  (bool(self.text_subsets) and set(self.text_subsets) <= set(SUBSETS),
                   f"--subsets must name some of {','.join(SUBSETS)}, got {','.join(self.text_subsets) or 'none'}"),
                  (0 <= self.synthetic_accents <= MAX_SYNTHETIC_ACCENTS,
                   f'--synthetic-accents must be in [0, {MAX_SYNTHETIC_ACCENTS}], got {self.synthetic_accents}')]
        for ok, message in checks:
            if not ok:
                raise SynthSettingsError(message)


class SynthSettingsError(ValueError):
    """A corpus setting out of range; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class CorpusPlan:
    """What every utterance draws from; built once, shared by all workers."""
    settings: SynthSettings
    texts: dict[str, SplitTexts]
    voices: dict[str, list[str]]  # "seen" (train, valid, test), "unseen" (test_unseen), "train" if it differs
    espeak_path: str | None = None  # the data overlay holding the synthetic accents

    def voices_of(self, split: str) -> list[str]:
        if split == 'test_unseen':
            return self.voices['unseen']
        return self.voices.get(split) or self.voices['seen']


def split_of(i: int) -> str:
    return {7: 'valid', 8: 'test', 9: 'test_unseen'}.get(i % 10, 'train')


def _draw_prosody(rng: np.random.Generator) -> Prosody:
    gap = int(rng.integers(1, WORD_GAP_MAX + 1)) if rng.random() < WORD_GAP_PROB else 0
    return Prosody(rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
                   pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                   amplitude=int(rng.integers(AMPLITUDE_RANGE[0], AMPLITUDE_RANGE[1] + 1)), word_gap=gap,
                   pitch_range=int(rng.integers(INTONATION_RANGE[0], INTONATION_RANGE[1] + 1)))


def _target_seconds(rng: np.random.Generator, s: SynthSettings) -> float:
    seconds = rng.lognormal(np.log(MEDIAN_SECONDS), SIGMA_LOG_SECONDS)
    return float(np.clip(seconds, 1.1 * s.min_seconds, 0.9 * s.max_seconds))


def _augment(rng: np.random.Generator, audio: np.ndarray, s: SynthSettings) -> tuple[np.ndarray, dict]:
    fields = {'noise_snr_db': None, 'noise_colour': None, 'reverb_rt60': None}
    if rng.random() < s.reverb_prob:
        rt60 = float(rng.uniform(*s.rt60))
        audio = reverberate(audio, room_impulse_response(rng, SAMPLE_RATE, rt60, float(rng.uniform(0.0, 12.0))))
        fields['reverb_rt60'] = round(rt60, 2)
    if rng.random() < s.noise_prob:
        snr, colour = float(rng.uniform(*s.snr_db)), str(rng.choice(list(NOISE_COLOURS)))
        audio = add_noise(rng, audio, snr, colour)
        fields.update(noise_snr_db=round(snr, 1), noise_colour=colour)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio * (0.99 / peak) if peak > 0.99 else audio), fields


def make_utterance(engine, plan: CorpusPlan, i: int, max_tries: int = 20) -> tuple[np.ndarray, dict]:
    """(16 kHz audio, manifest fields) of utterance ``i``."""
    s, split = plan.settings, split_of(i)
    rng = np.random.default_rng([s.seed, i])
    voices = plan.voices_of(split)
    for _ in range(max_tries):
        subset = choose_subset(rng, {k: DEFAULT_MIX[k] for k in s.text_subsets})
        voice = voices[int(rng.integers(len(voices)))]
        prosody = _draw_prosody(rng)
        text = utterance_text(rng, subset, split, plan.texts[split], _target_seconds(rng, s), prosody.rate,
                              prosody.word_gap)
        pads = rng.uniform(0.0, PAD_SECONDS, size=2)
        try:
            wav, sr = engine.synth(text, voice, prosody)
            seconds = -(-len(wav) * SAMPLE_RATE // sr) / SAMPLE_RATE + float(pads.sum())
            if s.min_seconds <= seconds <= s.max_seconds:
                phonemes = engine.phonemes(text, voice)  # of the kept text only: it costs a second espeak call
                break
        except SynthesisError as e:  # one crash must not end a corpus of hours: draw another text
            logger.warning('utterance %d: %s; drawing another text', i, e)
    else:
        raise RuntimeError(f'utterance {i}: no text within [{s.min_seconds}, {s.max_seconds}] s in {max_tries} tries')
    lead, tail = (np.zeros(int(p * SAMPLE_RATE), np.float32) for p in pads)
    audio = np.concatenate([lead, resample(wav, sr, SAMPLE_RATE), tail])
    audio, augmentation = _augment(rng, audio, s)
    fields = {'duration': round(len(audio) / SAMPLE_RATE, 4), 'text': transcript(text), 'phonemes': phonemes,
              'subset': subset, 'lang': 'en', 'voice': voice, 'accent': voice_parts(voice)[0],
              **dataclasses.asdict(prosody), **augmentation}
    return audio, fields


def _write_utterance(engine, plan: CorpusPlan, out: str, i: int) -> dict:
    audio, fields = make_utterance(engine, plan, i)
    rel = f'audio/{i:06d}.wav'
    write_wav(os.path.join(out, rel), audio, SAMPLE_RATE)
    return {'audio_filepath': rel, **fields}


_process_state = None  # (engine, plan) of a worker process: the library backend keeps global state


def _start_process(backend: str, plan: CorpusPlan) -> None:
    global _process_state
    torch.set_num_threads(1)  # N workers x all-core torch pools crawled on a 64-core host
    _process_state = (find_backend(backend, plan.espeak_path), plan)


def _write_in_process(out: str, i: int) -> dict:
    return _write_utterance(*_process_state, out, i)


def _synthesize_all(engine, backend: str, plan: CorpusPlan, out: str, num_utterances: int, jobs: int | None):
    """Manifest rows in utterance order. The binary backend runs in threads for small corpora
    (nothing to start) and in processes from ``PROCESS_POOL_MIN`` utterances on (the GIL-bound part
    of an utterance, ~5 ms, would cap threads near 200 utterances/s); the library backend, not
    thread-safe, in processes when ``jobs`` > 1."""
    workers = jobs or os.cpu_count() or 1
    threads = engine.thread_safe and workers > 1 and num_utterances < PROCESS_POOL_MIN
    processes = workers > 1 and not threads and (engine.thread_safe or bool(jobs))
    if threads:
        with ThreadPoolExecutor(max_workers=workers + 2) as pool:
            return _with_progress(pool.map(lambda i: _write_utterance(engine, plan, out, i), range(num_utterances)),
                                  num_utterances)
    if not processes:
        return _with_progress((_write_utterance(engine, plan, out, i) for i in range(num_utterances)), num_utterances)
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_process, initargs=(backend, plan)) as pool:
        return _with_progress(pool.map(partial(_write_in_process, out), range(num_utterances), chunksize=16),
                              num_utterances)


def _with_progress(rows, total: int) -> list[dict]:
    """The rows as they come, with a progress line every ``PROGRESS_SECONDS`` and one at the end."""
    progress, out = Progress('synth', total, 'utterances', PROGRESS_SECONDS), []
    for row in rows:
        out.append(row)
        progress.advance()
    return out


def build_corpus(out: str, num_utterances: int, seed: int = 0, noise_prob: float = 0.3,
                 snr_db: tuple[float, float] = (5.0, 30.0), min_seconds: float = 1.0, max_seconds: float = 20.0,
                 backend: str = 'auto', jobs: int | None = None, text_source: str | None = None,
                 reverb_prob: float = 0.2, rt60: tuple[float, float] = (0.2, 0.9),
                 subsets: tuple[str, ...] = SUBSETS, synthetic_accents: int = 0) -> dict:
    """Write the corpus; returns the summary also saved as ``corpus.json`` (plus ``wall_seconds``)."""
    settings = SynthSettings(seed, min_seconds, max_seconds, noise_prob, tuple(snr_db), reverb_prob, tuple(rt60),
                             tuple(subsets), synthetic_accents)
    settings.validate()
    if num_utterances < 1 or (jobs is not None and jobs < 1):
        raise SynthSettingsError(f'--num-utterances ({num_utterances}) and --jobs ({jobs}) must be at least 1')
    pools = load_text_source(text_source)
    texts = split_texts(pools)
    source = {'path': text_source or default_text_source(), 'source': pools.source, 'sentences': len(pools.sentences),
              'phrases': len(pools.phrases)}
    engine = find_backend(backend)
    voices, missing = corpus_voices(engine.data_dir)
    os.makedirs(os.path.join(out, 'audio'), exist_ok=True)
    engine, espeak_path, accents = add_accents(engine, backend, voices, out, settings.synthetic_accents, seed)
    plan = CorpusPlan(settings, texts, voices, espeak_path)
    start = time.perf_counter()
    rows = _synthesize_all(engine, backend, plan, out, num_utterances, jobs)
    splits = {name: [r for i, r in enumerate(rows) if split_of(i) == name] for name in SPLITS}
    for name, split_rows in splits.items():
        with open(os.path.join(out, f'{name}.jsonl'), 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(r) + '\n' for r in split_rows)
    summary = {'version': CORPUS_VERSION, 'num_utterances': num_utterances, **dataclasses.asdict(settings),
               'backend': engine.name, 'espeak': engine.version, 'phonemes': PHONEMES,
               'audio_reproducible': engine.deterministic,
               'sample_rate': SAMPLE_RATE, 'text_source': source,
               **summarize(splits, voices, missing, {s: len(t.words) for s, t in texts.items()}),
               'synthetic_accent_files': accents}
    with open(os.path.join(out, 'corpus.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=1)
    return {**summary, 'wall_seconds': round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.tools.corpus.synth',
                                description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='output folder (created)')
    p.add_argument('--num-utterances', type=int, required=True)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--text-source', default=None,
                   help='WordNet folder or pools file (python -m megatron_salm_mtp.tools.corpus.text_source); '
                        'default: the Debian wordnet-base folder')
    p.add_argument('--noise-prob', type=float, default=0.3, help='fraction of utterances with added noise')
    p.add_argument('--snr-db', type=float, nargs=2, default=(5.0, 30.0), metavar=('MIN', 'MAX'))
    p.add_argument('--reverb-prob', type=float, default=0.2, help='fraction of utterances with room reverberation')
    p.add_argument('--rt60', type=float, nargs=2, default=(0.2, 0.9), metavar=('MIN', 'MAX'),
                   help='reverberation time range in seconds')
    p.add_argument('--min-seconds', type=float, default=1.0)
    p.add_argument('--max-seconds', type=float, default=20.0)
    p.add_argument('--subsets', default=','.join(SUBSETS),
                   help='comma-separated subsets to draw (their default shares renormalised), e.g. digits for a '
                        'small-vocabulary corpus')
    p.add_argument('--synthetic-accents', type=int, default=0, metavar='K',
                   help="K accents recombined from the training accents' espeak-ng voice files, spoken in "
                        'the train split only (the other splits are unchanged)')
    p.add_argument('--backend', choices=('auto', 'cli', 'lib'), default='auto',
                   help='espeak-ng binary (cli), espeakng-loader (lib), or whichever is present (auto)')
    p.add_argument('--jobs', type=int, default=None,
                   help='parallel synthesis: threads (binary backend) or processes (library backend)')
    a = p.parse_args(argv)
    try:
        s = build_corpus(a.out, a.num_utterances, a.seed, a.noise_prob, tuple(a.snr_db), a.min_seconds,
                         a.max_seconds, a.backend, a.jobs, a.text_source, a.reverb_prob, tuple(a.rt60),
                         tuple(k for k in a.subsets.split(',') if k), a.synthetic_accents)
    except (TextSourceError, SynthSettingsError, AccentError) as e:
        print(f'{p.prog}: error: {e}', file=sys.stderr)
        return 2
    pool = s['voice_pool']
    per_split = '; '.join(f"{k} {v['utterances']} utt {v['hours']} h {len(v['voices'])} voices "
                          f"{v['distinct_words']} words" for k, v in s['per_split'].items())
    print(f"wrote {s['num_utterances']} utterances ({s['hours']} h of audio, {s['distinct_words']} distinct words) "
          f"to {a.out} in {s['wall_seconds']} s with {s['backend']} ({s['espeak']}): {per_split}; "
          f"subsets {s['subsets']}; test_unseen voices: base {' / '.join(pool['held_out_bases'])} or variant "
          f"{' / '.join(pool['held_out_variants'])}, of {len(pool['seen']) + len(pool['unseen'])} voices "
          f"({len(pool['missing'])} missing here{': ' + ', '.join(pool['missing']) if pool['missing'] else ''})")
    if not s['audio_reproducible']:
        print('note: the espeakng-loader library is not deterministic: another run gives the same texts with '
              'slightly different audio; install the espeak-ng binary for bit-reproducible corpora')
    return 0


if __name__ == '__main__':
    sys.exit(main())
