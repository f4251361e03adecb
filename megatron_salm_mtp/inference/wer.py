"""Word and character error rates of transcripts, raw and after a Whisper-style English normaliser.

Raw: lowercase, every character that is not a letter, digit or apostrophe becomes a space ("Call
5, 5 1!" -> ``call 5 5 1``); the figure the project always reported, kept beside the normalised one.

Normalised: Whisper's English normaliser (the ``whisper-normalizer`` package, the ``eval`` extra):
case, punctuation and diacritics, spoken and written numbers to digits ("twenty one" -> ``21``),
British to American spelling, contractions expanded ("it's" -> ``it is``), fillers ("uh", "um")
dropped. Whisper joins spoken digits into one number ("five five one" -> ``551``) but leaves
written ones apart ("5 5 1") and spells a lone ``1`` as ``one``; so afterwards every digit string
is split into single digits, and ``one`` inside a run of digits is the digit: "Call 5 5 1!", "call
five five one" and "call 551" are all ``call 5 5 1``. Numbers are thus scored digit by digit, as
the corpus writes its digit strings.

One alignment (rapidfuzz's Levenshtein edit operations, C++) gives the substitutions, deletions
and insertions; CER aligns the characters of the normalised words joined by single spaces.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

try:  # the eval extra; evaluate checks for it before it loads a model
    from rapidfuzz.distance import Levenshtein
    from whisper_normalizer.english import EnglishTextNormalizer
    _WHISPER_NORMALISER = EnglishTextNormalizer()
except ImportError:
    Levenshtein = _WHISPER_NORMALISER = None

MISSING_PACKAGES = ("scoring transcripts needs the packages 'rapidfuzz' and 'whisper-normalizer': "
                    "pip install 'megatron_salm_mtp[eval]'")

_NOT_WORD = re.compile(r"[^\w']+|_")
_DIGITS = re.compile(r'[0-9]+')


def scoring_available() -> bool:
    return _WHISPER_NORMALISER is not None


def _require_scoring() -> None:
    if _WHISPER_NORMALISER is None:
        raise RuntimeError(MISSING_PACKAGES)


def raw_words(text: str) -> list[str]:
    """Words of ``text`` lowercased, without punctuation."""
    return _NOT_WORD.sub(' ', text.lower()).split()


def _digits_one_form(words: list[str]) -> list[str]:
    """Digit strings as single digits; ``one`` is the digit 1 in a run of two or more number
    words (a lone ``one`` stays a word: "the one and only")."""
    out, run = [], []
    for word in words + ['']:  # '' closes the last run
        if _DIGITS.fullmatch(word) or word == 'one':
            run.append(word)
            continue
        if len(run) == 1 and run[0] == 'one':
            out.append('one')
        else:
            out.extend(digit for token in run for digit in token.replace('one', '1'))
        run = []
        if word:
            out.append(word)
    return out


@lru_cache(maxsize=1 << 16)  # a reference is scored once per mode; greedy and speculative agree
def _normalised(text: str) -> tuple:
    _require_scoring()
    return tuple(_digits_one_form(_WHISPER_NORMALISER(text).split()))


def normalised_words(text: str) -> list[str]:
    """Words of ``text`` after the Whisper-style normaliser and one form for digit strings."""
    return list(_normalised(text))


@dataclass
class ErrorCount:
    """Substitutions, deletions and insertions against ``reference`` tokens, summed over pairs."""
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference: int = 0

    def add(self, reference: Sequence, hypothesis: Sequence) -> None:
        _require_scoring()
        for op in Levenshtein.editops(reference, hypothesis):
            if op.tag == 'replace':
                self.substitutions += 1
            elif op.tag == 'delete':
                self.deletions += 1
            else:
                self.insertions += 1
        self.reference += len(reference)

    def merge(self, other: 'ErrorCount') -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors over reference tokens, pooled over pairs (corpus-level, as jiwer over lists); 0
        tokens and 0 errors gives 0, errors against an empty reference give infinity."""
        if self.reference == 0:
            return 0.0 if self.errors == 0 else float('inf')
        return self.errors / self.reference


@dataclass
class Scores:
    """Raw WER, normalised WER with its S/D/I split, and CER of (reference, hypothesis) pairs."""
    raw: ErrorCount = field(default_factory=ErrorCount)
    words: ErrorCount = field(default_factory=ErrorCount)
    chars: ErrorCount = field(default_factory=ErrorCount)

    def add(self, reference: str, hypothesis: str) -> None:
        self.raw.add(raw_words(reference), raw_words(hypothesis))
        ref, hyp = _normalised(reference), _normalised(hypothesis)
        self.words.add(ref, hyp)
        self.chars.add(' '.join(ref), ' '.join(hyp))

    def merge(self, other: 'Scores') -> None:
        for mine, theirs in ((self.raw, other.raw), (self.words, other.words), (self.chars, other.chars)):
            mine.merge(theirs)

    def figures(self) -> dict[str, float]:
        return {'wer': self.words.rate, 'wer_raw': self.raw.rate, 'cer': self.chars.rate,
                'word_errors': self.words.errors, 'substitutions': self.words.substitutions,
                'deletions': self.words.deletions, 'insertions': self.words.insertions,
                'reference_words': self.words.reference, 'raw_word_errors': self.raw.errors,
                'raw_reference_words': self.raw.reference, 'char_errors': self.chars.errors,
                'reference_chars': self.chars.reference}
