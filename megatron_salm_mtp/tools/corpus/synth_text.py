"""Texts of the synthetic corpus (version 2): four subsets, drawn per split, sized to a duration.

Why four subsets: acceptance of MTP drafts on transcripts a language model can guess says little
about listening. ``natural`` is real English (WordNet's usage examples and definitions, one or
several joined to reach the utterance's duration); ``wordlist`` (random words of a ~45,000-word
lexicon), ``digits`` (digit strings) and ``names`` (first name + surname pairs) can only be
transcribed from the audio. Evaluation reports each subset.

Why the split matters here: every text has a split of its own (:func:`text_split`, a hash of its
transcript: 85 % train, 5 % each valid / test / test_unseen), and an utterance of a split only uses
texts of that split: natural sentences come from the split's share of the pools, and a word list,
digit string or name pair is redrawn until its hash agrees. No held-out text is ever trained on.
``test_unseen`` also gets the words and names that no training text contains (``words`` /
``first_names`` / ``surnames`` of :func:`split_texts`), the other splits the rest.

Everything is drawn from a ``numpy.random.Generator`` the caller seeds. Texts are spoken forms
(:mod:`.text_clean`); ``transcript()`` gives the manifest text.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import lru_cache

import numpy as np

from .text_clean import transcript
from .text_source import TextPools, lexicon

SUBSETS = ('natural', 'wordlist', 'digits', 'names')
DEFAULT_MIX = {'natural': 0.55, 'wordlist': 0.2, 'digits': 0.1, 'names': 0.15}
SPLITS = ('train', 'valid', 'test', 'test_unseen')
_BUCKET_ENDS = (85, 90, 95, 100)  # hash bucket (0..99) upper ends of SPLITS
SENTENCE_SHARE = 0.6  # natural pieces from usage examples; the rest from definitions
_DIGIT_CARRIERS = ('', '', 'my number is', 'the code is', 'call', 'dial', 'the pin is', 'it was')
_NAME_CARRIERS = ('', '', 'ask', 'this is', 'send it to', 'call', 'a letter from', 'I spoke with', 'meet')


def text_split(text: str) -> str:
    """The split a text belongs to: a stable hash of its transcript (the same on every machine)."""
    digest = hashlib.blake2b(transcript(text).encode('utf-8'), digest_size=8).digest()
    bucket = int.from_bytes(digest, 'little') % 100
    return next(s for s, end in zip(SPLITS, _BUCKET_ENDS) if bucket < end)


@dataclasses.dataclass(frozen=True)
class SplitTexts:
    sentences: tuple[str, ...]
    phrases: tuple[str, ...]
    words: tuple[str, ...]
    first_names: tuple[str, ...]
    surnames: tuple[str, ...]


@lru_cache(maxsize=2)
def split_texts(pools: TextPools) -> dict[str, SplitTexts]:
    """What each split draws from (see the module docstring); cached: it costs about a second."""
    sentences, phrases = ({s: [] for s in SPLITS} for _ in range(2))
    for pool, by_split in ((pools.sentences, sentences), (pools.phrases, phrases)):
        for t in pool:
            by_split[text_split(t)].append(t)
    trained = {w.lower() for t in sentences['train'] + phrases['train'] for w in transcript(t).split()}

    def held(names):  # names off the training share whose word no training text contains
        return {n for n in names if text_split(n) != 'train' and n.lower() not in trained}

    held_first, held_last = held(pools.first_names), held(pools.surnames)
    seen_first = tuple(n for n in pools.first_names if n not in held_first)
    seen_last = tuple(n for n in pools.surnames if n not in held_last)
    trained |= {n.lower() for n in seen_first + seen_last}
    words = lexicon(pools)
    seen_words = tuple(w for w in words if w in trained)
    unseen_words = tuple(w for w in words if w not in trained)
    return {s: SplitTexts(tuple(sentences[s]), tuple(phrases[s]),
                          unseen_words if s == 'test_unseen' else seen_words,
                          tuple(sorted(held_first)) if s == 'test_unseen' else seen_first,
                          tuple(sorted(held_last)) if s == 'test_unseen' else seen_last)
            for s in SPLITS}


def estimate_seconds(text: str, rate: int, word_gap: int = 0) -> float:
    """espeak-ng's duration for ``text`` at ``rate`` wpm, fitted on 300 utterances (90 % within 12 %)."""
    words = transcript(text)
    return 0.16 * len(words) * 60.0 / rate + 0.018 * word_gap * words.count(' ') + 0.36


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _in_split(rng, split: str, draw, tries: int = 2000) -> str:
    """``draw(rng)`` until the text belongs to ``split`` (a 5 % split takes 20 draws on average;
    all 2000 miss with probability 1e-45)."""
    for _ in range(tries):
        text = draw(rng)
        if text_split(text) == split:
            return text
    raise RuntimeError(f'no {split} text in {tries} draws: the text pools are too small')


def natural(rng, texts: SplitTexts, seconds: float, rate: int, word_gap: int) -> str:
    """Sentences and definitions joined until their estimated length reaches ``seconds``."""
    def piece():
        return _pick(rng, texts.sentences if rng.random() < SENTENCE_SHARE else texts.phrases)

    candidates = [piece() for _ in range(8)]  # start with the one that fits best
    text = min(candidates, key=lambda t: abs(estimate_seconds(t, rate, word_gap) - seconds))
    for _ in range(12):
        if estimate_seconds(text, rate, word_gap) >= 0.85 * seconds:
            break
        longer = f"{text.rstrip(',;:')}. {piece()}" if text[-1] not in '?!.' else f'{text} {piece()}'
        if estimate_seconds(longer, rate, word_gap) <= 1.15 * seconds:
            text = longer
    return text


def wordlist(rng, texts: SplitTexts, seconds: float, rate: int, word_gap: int, max_words: int = 40) -> str:
    words = [_pick(rng, texts.words) for _ in range(2)]
    while len(words) < max_words and estimate_seconds(' '.join(words), rate, word_gap) < 0.9 * seconds:
        words.append(_pick(rng, texts.words))
    return ' '.join(words)


def digits(rng, seconds: float, rate: int, min_digits: int = 3, max_digits: int = 12) -> str:
    carrier = _pick(rng, _DIGIT_CARRIERS)
    spoken = seconds - 0.4 - (0.5 if carrier else 0.0)  # a digit takes ~52/rate s (measured)
    count = int(np.clip(round(spoken * rate / 52.0), min_digits, max_digits))
    return ' '.join(([carrier] if carrier else []) + [str(int(d)) for d in rng.integers(0, 10, size=count)])


def names(rng, texts: SplitTexts, seconds: float, rate: int, max_people: int = 3) -> str:
    """First name + surname pairs, as many as fit ``seconds`` (at least one), after a carrier."""
    carrier = _pick(rng, _NAME_CARRIERS)
    people = [f'{_pick(rng, texts.first_names)} {_pick(rng, texts.surnames)}' for _ in range(max_people)]
    count = 1
    while count < max_people and estimate_seconds(f"{carrier} {' and '.join(people[:count + 1])}", rate) <= seconds:
        count += 1
    pairs = ' and '.join(people[:count])
    return f'{carrier} {pairs}' if carrier else pairs


def choose_subset(rng: np.random.Generator, mix: dict[str, float] = DEFAULT_MIX) -> str:
    keys = [k for k in SUBSETS if mix.get(k, 0) > 0]
    p = np.array([mix[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def utterance_text(rng, subset: str, split: str, texts: SplitTexts, seconds: float, rate: int,
                   word_gap: int) -> str:
    """Spoken text of one utterance of ``subset`` in ``split``, about ``seconds`` long."""
    if subset == 'natural':
        return natural(rng, texts, seconds, rate, word_gap)
    draw = {'wordlist': lambda r: wordlist(r, texts, seconds, rate, word_gap),
            'digits': lambda r: digits(r, seconds, rate),
            'names': lambda r: names(r, texts, seconds, rate)}.get(subset)
    if draw is None:
        raise ValueError(f'subset must be one of {SUBSETS}, got {subset!r}')
    return _in_split(rng, split, draw)
