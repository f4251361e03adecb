"""English text pools of the synthetic corpus, from WordNet 3.0 or a compact file made from it.

Sources (``load_text_source``):

- a WordNet folder holding ``data.{noun,verb,adj,adv}`` (Debian's ``wordnet-base`` installs one at
  ``/usr/share/wordnet``, the default when present);
- a compact file written by ``python -m megatron_salm_mtp.tools.corpus.text_source --out pools.json.gz``
  (2.7 MB, gzip JSON): the form to carry to a machine without WordNet.

Pools, cleaned by :mod:`.text_clean`: ``sentences`` (WordNet's usage examples, 42,105 real
sentences such as "he made a note of the appointment"), ``phrases`` (its definitions, 123,326, such
as "a sleeve for storing a phonograph record"), and ``first_names`` / ``surnames`` (1,169 and 2,902:
first and last words of the multi-word person names in ``noun.person``, such as Jane Goodall, less
titles, nationalities and first names that are common words). :func:`lexicon` is every lower-case
word of the two text pools (44,696): the material of the word-list subset.

WordNet 3.0 Copyright 2006 by Princeton University, under the WordNet licence (use, copy and
distribute with its notice), which the compact file records in its ``source`` field.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import re
import sys
from functools import lru_cache

from .text_clean import clean_text, decapitalise_first, lowercase_words, transcript

WORDNET_DIR = '/usr/share/wordnet'
WORDNET_FILES = tuple(f'data.{pos}' for pos in ('noun', 'verb', 'adj', 'adv'))
POOLS_FORMAT = 1
_PERSON_LEXFILE = 18  # noun.person
_QUOTED = re.compile(r'"([^"]*)"')
_NAME = re.compile(r'[A-Z][a-z]+')
_TITLES = frozenset("""Saint Sir King Queen Prince Princess Lord Lady Pope Emperor Empress General Duke Count
    Baron Mother Father Brother Sister Dame Mount Don Madame Sultan Tsar Czar Jr Sr Great Elder Younger""".split())
_SOURCE = 'WordNet 3.0, Copyright 2006 by Princeton University, under the WordNet 3.0 licence'


class TextSourceError(ValueError):
    """A text source that cannot be read; the message names it."""


@dataclasses.dataclass(frozen=True)
class TextPools:
    sentences: tuple[str, ...]
    phrases: tuple[str, ...]
    first_names: tuple[str, ...]
    surnames: tuple[str, ...]
    source: str


def lexicon(pools: TextPools) -> tuple[str, ...]:
    """Sorted lower-case words (no digits) of the sentences and phrases."""
    words = {w for s in pools.sentences + pools.phrases for w in transcript(s).split()}
    return tuple(sorted(w for w in words if w.islower()))


def _synset_lines(folder: str):
    for name in WORDNET_FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding='latin-1') as f:
                yield from (line for line in f if not line.startswith('  '))  # licence header
        except OSError as e:
            raise TextSourceError(f'text source {folder}: cannot read {path} ({e.strerror})') from e


def _person_names(person_lemmas: set[str], not_names: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """First and last words of multi-word person names, without titles, common words (a first name
    such as Rose or White would be written lower case in a sentence) or nationalities (Indian)."""
    first, last = set(), set()
    for parts in (lemma.split('_') for lemma in person_lemmas):
        if len(parts) < 2 or 'the' in parts:
            continue
        first.update(w for w in parts[:1] if _NAME.fullmatch(w) and w.lower() not in not_names)
        last.update(w for w in parts[-1:] if _NAME.fullmatch(w))
    return tuple(sorted(first - _TITLES - not_names)), tuple(sorted(last - _TITLES - not_names))


def read_wordnet(folder: str = WORDNET_DIR) -> TextPools:
    """Pools of a WordNet ``dict`` folder (see the module docstring)."""
    examples, glosses, persons, lemma_words, adjectives = set(), set(), set(), set(), set()
    for line in _synset_lines(folder):
        head, _, gloss = line.partition(' | ')
        fields = head.split()
        if len(fields) < 5 or not gloss:
            raise TextSourceError(f'text source {folder}: not a WordNet data line: {line[:60]!r}')
        lemmas = [re.sub(r'\(.*\)$', '', fields[4 + 2 * k]) for k in range(int(fields[3], 16))]
        lemma_words.update(w for lemma in lemmas if lemma.islower() for w in lemma.split('_'))
        if fields[2] in ('a', 's'):
            adjectives.update(lemma for lemma in lemmas if lemma[:1].isupper())
        if fields[2] == 'n' and int(fields[1]) == _PERSON_LEXFILE:
            persons.update(lemma for lemma in lemmas if lemma[:1].isupper())
        examples.update(_QUOTED.findall(gloss))
        glosses.update(_QUOTED.sub('', gloss).split(';'))
    sentences = {c for c in map(clean_text, examples) if c}
    phrases = {c for c in map(clean_text, glosses) if c} - sentences
    lower = lowercase_words(sentences | phrases) | lemma_words
    first, last = _person_names(persons, lower | adjectives)
    return TextPools(tuple(sorted({decapitalise_first(s, lower) for s in sentences})),
                     tuple(sorted({decapitalise_first(s, lower) for s in phrases})), first, last, _SOURCE)


def save_pools(pools: TextPools, path: str) -> None:
    """The compact file: gzip JSON; ``mtime=0`` so the same pools give the same bytes."""
    payload = {'format': POOLS_FORMAT, **dataclasses.asdict(pools)}
    with open(path, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as f:
        f.write(json.dumps(payload, indent=0).encode('utf-8'))


def _load_pools_file(path: str) -> TextPools:
    try:
        with gzip.open(path, 'rt', encoding='utf-8') as f:
            payload = json.load(f)
    except (OSError, EOFError, ValueError) as e:
        raise TextSourceError(f'text source {path}: not a readable pools file ({e})') from e
    if not isinstance(payload, dict) or payload.get('format') != POOLS_FORMAT:
        raise TextSourceError(f'text source {path}: not a pools file of format {POOLS_FORMAT}')
    fields = [f.name for f in dataclasses.fields(TextPools)]
    missing = [k for k in fields if k not in payload]
    if missing:
        raise TextSourceError(f'text source {path}: missing {missing}')
    pools = TextPools(**{k: payload[k] if k == 'source' else tuple(payload[k]) for k in fields})
    if not (pools.sentences and pools.phrases and pools.first_names and pools.surnames):
        raise TextSourceError(f'text source {path}: an empty pool')
    return pools


def default_text_source() -> str | None:
    return WORDNET_DIR if os.path.isfile(os.path.join(WORDNET_DIR, WORDNET_FILES[0])) else None


def load_text_source(path: str | None = None) -> TextPools:
    """Pools of a WordNet folder or a compact file; ``None``: the Debian WordNet folder. Cached per
    process (reading WordNet costs seconds) until the source's modification time changes."""
    path = path or default_text_source()
    if path is None:
        raise TextSourceError(f'no text source: {WORDNET_DIR} is absent (apt-get install wordnet-base), '
                              'pass --text-source FILE '
                              '(python -m megatron_salm_mtp.tools.corpus.text_source --out FILE)')
    if not os.path.exists(path):
        raise TextSourceError(f'text source {path}: no such file or folder')
    return _load_cached(os.path.abspath(path), os.stat(path).st_mtime_ns)


@lru_cache(maxsize=2)
def _load_cached(path: str, _mtime_ns: int) -> TextPools:
    return read_wordnet(path) if os.path.isdir(path) else _load_pools_file(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m megatron_salm_mtp.tools.corpus.text_source',
                                description='Write the compact text-pools file of the synthetic corpus.')
    p.add_argument('--out', required=True, help='output file (gzip JSON, e.g. pools.json.gz)')
    p.add_argument('--wordnet', default=WORDNET_DIR, help='WordNet folder with data.{noun,verb,adj,adv}')
    a = p.parse_args(argv)
    try:
        pools = read_wordnet(a.wordnet)
    except TextSourceError as e:
        print(f'{p.prog}: error: {e}', file=sys.stderr)
        return 2
    save_pools(pools, a.out)
    print(f'wrote {a.out}: {len(pools.sentences)} sentences, {len(pools.phrases)} phrases, '
          f'{len(lexicon(pools))} lexicon words, {len(pools.first_names)} first names, '
          f'{len(pools.surnames)} surnames ({os.path.getsize(a.out) / 1e6:.1f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
