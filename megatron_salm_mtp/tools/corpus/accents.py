"""Synthetic English accents for the training split (``synth --synthetic-accents K``).

Why: espeak-ng speaks 8 English accents and ``test_unseen`` holds 2 of them out, so training hears
6, and the recogniser errs most on the held-out ones (docs/quality.md, run 4: 0.35-0.38 WER there
against 0.16-0.27 for unseen variants of the training accents). An espeak-ng accent is a voice
file: a phoneme table, dictionary-rule switches, phoneme replacements and stress timing. A
synthetic accent recombines those parts of the *training* accents' files (the held-out accents'
files are never read): the phoneme table of one, the dictionary rules of another, a random share of
all their replacements (at most one per phoneme) and the stress timing of a third. The model then
hears many more ways of realising the same words, which is what an unseen accent asks of it.

The accents live in an overlay of espeak-ng's data folder written into the corpus
(``espeak-accents/espeak-ng-data``: links to every part of the real folder, plus
``voices/acc/NN``); manifests name them ``acc/NN`` (``acc/NN+VARIANT`` with a voice variant), and
only the train split uses them. Each is checked when written: espeak-ng must speak a test sentence
with it and transcribe it in IPA (each utterance's ``phonemes``), or the corpus stops with an error
naming the file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .espeak import SynthesisError, find_backend
from .voices import BASE_VOICES, NO_VARIANT, voice_name, voice_parts

ACCENT_FOLDER = 'acc'  # under voices/: espeak-ng takes "acc/NN" as a voice name
OVERLAY = 'espeak-accents'  # in the corpus folder: the parent of the overlay's espeak-ng-data
REPLACE_SHARE = 0.4  # the chance that each known replacement joins an accent
_STREAM = 0xACC  # the accents' random stream, apart from every utterance's
CHECK_TEXT = 'the quick brown fox jumps over the lazy dog'


class AccentError(ValueError):
    """A synthetic accent that espeak-ng cannot speak, or no data folder to build it from."""


@dataclasses.dataclass(frozen=True)
class AccentParts:
    """The parts of the training accents' voice files that synthetic accents recombine."""
    phoneme_tables: tuple[str, ...]
    dictrules: tuple[tuple[str, ...], ...]  # each accent's switches (some have none)
    replacements: tuple[tuple[str, str, str], ...]  # (flags, phoneme, replacement), each once
    stress_lengths: tuple[str, ...]


def read_parts(data_dir: str, bases) -> AccentParts:
    """The parts of the voice files of ``bases`` (names of :data:`.voices.BASE_VOICES`)."""
    tables, rules, replacements, stress = [], [], [], []
    for base in bases:
        with open(os.path.join(data_dir, 'lang', BASE_VOICES[base]), encoding='utf-8') as f:
            fields = [line.split() for line in f if line.strip() and not line.startswith('//')]
        tables.append(next((f[1] for f in fields if f[0] == 'phonemes'), 'en'))  # en: espeak's default
        rules.append(tuple(x for f in fields if f[0] == 'dictrules' for x in f[1:]))
        replacements += [tuple(f[1:4]) for f in fields if f[0] == 'replace' and len(f) >= 4]
        stress += [' '.join(f[1:]) for f in fields if f[0] == 'stressLength']
    return AccentParts(tuple(dict.fromkeys(tables)), tuple(dict.fromkeys(rules)),
                       tuple(dict.fromkeys(replacements)), tuple(dict.fromkeys(stress)))


def accent_file(parts: AccentParts, rng: np.random.Generator, number: int) -> str:
    """The text of one synthetic accent's voice file."""
    lines = [f'name synthetic English accent {number:02d}', 'language en 10',
             f'phonemes {parts.phoneme_tables[int(rng.integers(len(parts.phoneme_tables)))]}']
    rules = parts.dictrules[int(rng.integers(len(parts.dictrules)))]
    if rules:
        lines.append('dictrules ' + ' '.join(rules))
    replaced = set()
    for k in rng.permutation(len(parts.replacements)):
        flags, phoneme, new = parts.replacements[k]
        if rng.random() < REPLACE_SHARE and phoneme not in replaced:
            replaced.add(phoneme)
            lines.append(f'replace {flags} {phoneme} {new}')
    if parts.stress_lengths:
        lines.append('stressLength ' + parts.stress_lengths[int(rng.integers(len(parts.stress_lengths)))])
    return '\n'.join(lines) + '\n'


def _link_all(source: str, target: str, skip: str) -> None:
    os.makedirs(target, exist_ok=True)
    for entry in os.listdir(source):
        if entry != skip and not os.path.lexists(os.path.join(target, entry)):
            os.symlink(os.path.join(source, entry), os.path.join(target, entry))


def write_overlay(data_dir: str, corpus: str, count: int, seed: int, bases) -> tuple[str, dict[str, str]]:
    """(the overlay's espeak path: the folder holding its espeak-ng-data, {voice name: voice file
    text}) of ``count`` accents recombined from ``bases``; the same ``seed`` writes the same files."""
    parent = os.path.join(corpus, OVERLAY)
    data = os.path.join(parent, 'espeak-ng-data')
    _link_all(data_dir, data, skip='voices')
    _link_all(os.path.join(data_dir, 'voices'), os.path.join(data, 'voices'), skip=ACCENT_FOLDER)
    folder = os.path.join(data, 'voices', ACCENT_FOLDER)
    os.makedirs(folder, exist_ok=True)
    parts, rng = read_parts(data_dir, bases), np.random.default_rng([seed, _STREAM])
    accents = {}
    for number in range(count):
        text = accent_file(parts, rng, number)
        with open(os.path.join(folder, f'{number:02d}'), 'w', encoding='utf-8') as f:
            f.write(text)
        accents[f'{ACCENT_FOLDER}/{number:02d}'] = text
    return parent, accents


def add_accents(engine, backend: str, voices: dict[str, list[str]], corpus: str, count: int, seed: int):
    """(engine, espeak path, {accent: voice file}) with ``count`` accents written into ``corpus``
    and added to ``voices['train']`` with every seen variant (the engine then reads the overlay);
    each must speak :data:`CHECK_TEXT`, or an AccentError names its file. ``count`` 0: the engine
    as it was."""
    if not count:
        return engine, None, {}
    if engine.data_dir is None:
        raise AccentError('--synthetic-accents: the espeak-ng backend does not say where its data is')
    seen = voices['seen']
    bases = sorted({voice_parts(v)[0] for v in seen})  # the held-out accents are in no seen voice
    variants = sorted({voice_parts(v)[1] for v in seen} - {NO_VARIANT})
    path, accents = write_overlay(engine.data_dir, corpus, count, seed, bases)
    engine = find_backend(backend, path)
    for name in accents:
        where = os.path.join(path, 'espeak-ng-data', 'voices', name)
        try:
            wav, rate = engine.synth(CHECK_TEXT, name)
            engine.phonemes(CHECK_TEXT, name)  # every utterance's phonemes come from the same voice file
        except SynthesisError as e:
            raise AccentError(f'--synthetic-accents: {where}: {e}') from None
        if len(wav) < rate // 2:
            raise AccentError(f'--synthetic-accents: {where} speaks {len(wav) / rate:.2f} s of a 9-word sentence')
    voices['train'] = seen + [voice_name(a, v) for a in accents for v in [NO_VARIANT] + variants]
    return engine, path, accents
