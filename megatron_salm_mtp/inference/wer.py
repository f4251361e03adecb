"""Word error rate: word-level Levenshtein distance on normalised text (no external package).

Normalisation: lowercase, every character that is not a letter, digit or apostrophe becomes a
space, whitespace collapses; so "Call 5 5 1!" and "call 5 5 1" are the same four words.
"""

import re
from dataclasses import dataclass
from typing import Iterable, List, Tuple

_NOT_WORD = re.compile(r"[^\w']+|_")


def normalise(text: str) -> List[str]:
    """Words of ``text`` after normalisation."""
    return _NOT_WORD.sub(' ', text.lower()).split()


def word_edit_distance(reference: List[str], hypothesis: List[str]) -> int:
    """Fewest substitutions, deletions and insertions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1,
                             previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


@dataclass
class ErrorCount:
    errors: int = 0
    words: int = 0

    def add(self, reference: str, hypothesis: str) -> None:
        ref = normalise(reference)
        self.errors += word_edit_distance(ref, normalise(hypothesis))
        self.words += len(ref)

    @property
    def wer(self) -> float:
        """Errors over reference words (corpus-level, as jiwer's ``wer`` over lists); 0 words and 0
        errors gives 0, errors against an empty reference give infinity."""
        if self.words == 0:
            return 0.0 if self.errors == 0 else float('inf')
        return self.errors / self.words


def corpus_wer(pairs: Iterable[Tuple[str, str]]) -> float:
    """WER of (reference, hypothesis) pairs counted together."""
    count = ErrorCount()
    for reference, hypothesis in pairs:
        count.add(reference, hypothesis)
    return count.wer
