"""Deterministic sentences for the synthetic corpus, in four subsets.

Why four subsets: acceptance of MTP drafts on transcripts a language model can guess says little
about listening. ``natural`` sentences come from a small grammar (predictable from text alone);
``wordlist`` (random words from ~2,000), ``digits`` (random digit strings) and ``names`` (random
first name + surname pairs) can only be transcribed from the audio. Evaluation reports each subset.

Everything is drawn from a ``numpy.random.Generator`` the caller seeds, so a given seed and index
always give the same text. Texts are lowercase words, digits and capitalised names, no punctuation:
what a byte-level tiny model can learn in minutes.
"""

from __future__ import annotations

import numpy as np

from .wordlist import FIRST_NAMES, SURNAMES, WORDS

SUBSETS = ("natural", "wordlist", "digits", "names")
DEFAULT_MIX = {"natural": 0.4, "wordlist": 0.2, "digits": 0.2, "names": 0.2}

_ADJ = ("old", "small", "red", "quiet", "bright", "heavy", "warm", "cold", "new", "young", "green", "busy",
        "dark", "happy", "tall", "clean")
_NOUN = ("dog", "teacher", "train", "river", "garden", "letter", "window", "farmer", "city", "boat", "child",
         "doctor", "kitchen", "market", "road", "bird", "book", "house", "car", "friend")
_PLACE = ("in the park", "near the station", "at the market", "by the river", "on the hill", "at home",
          "in the kitchen", "behind the school")
_TIME = ("today", "this morning", "last night", "every day", "on monday", "after lunch", "in the evening",
         "next week")
_VERB_PAST = ("found", "opened", "painted", "watched", "carried", "cleaned", "followed", "visited", "sold",
              "fixed")
_VERB_BASE = ("find", "open", "paint", "watch", "carry", "clean", "follow", "visit", "sell", "fix")
_GRAMMAR = (
    "the {adj} {noun} {past} the {noun2}",
    "the {noun} {past} a {adj} {noun2} {time}",
    "my {noun} lives {place}",
    "we will {base} the {noun} {time}",
    "please {base} the {adj} {noun}",
    "the {noun2} was {adj} {time}",
    "a {adj} {noun} waited {place}",
    "did you {base} the {noun} {place}",
)
_DIGIT_CARRIERS = ("", "", "my number is ", "the code is ", "call ")
_NAME_CARRIERS = ("", "ask ", "this is ", "send it to ", "")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def natural(rng: np.random.Generator) -> str:
    n1 = _pick(rng, _NOUN)
    n2 = _pick(rng, [n for n in _NOUN if n != n1])
    return _pick(rng, _GRAMMAR).format(adj=_pick(rng, _ADJ), noun=n1, noun2=n2, past=_pick(rng, _VERB_PAST),
                                       base=_pick(rng, _VERB_BASE), place=_pick(rng, _PLACE),
                                       time=_pick(rng, _TIME))


def wordlist(rng: np.random.Generator, min_words: int = 3, max_words: int = 6) -> str:
    k = int(rng.integers(min_words, max_words + 1))
    return " ".join(WORDS[int(i)] for i in rng.choice(len(WORDS), size=k, replace=False))


def digits(rng: np.random.Generator, min_digits: int = 3, max_digits: int = 7) -> str:
    k = int(rng.integers(min_digits, max_digits + 1))
    return _pick(rng, _DIGIT_CARRIERS) + " ".join(str(int(d)) for d in rng.integers(0, 10, size=k))


def names(rng: np.random.Generator) -> str:
    people = [f"{_pick(rng, FIRST_NAMES)} {_pick(rng, SURNAMES)}" for _ in range(int(rng.integers(1, 3)))]
    return _pick(rng, _NAME_CARRIERS) + " and ".join(people)


_MAKERS = {"natural": natural, "wordlist": wordlist, "digits": digits, "names": names}


def choose_subset(rng: np.random.Generator, mix: dict[str, float] = DEFAULT_MIX) -> str:
    keys = [k for k in SUBSETS if mix.get(k, 0) > 0]
    p = np.array([mix[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sentence(rng: np.random.Generator, subset: str) -> str:
    if subset not in _MAKERS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    return _MAKERS[subset](rng)
