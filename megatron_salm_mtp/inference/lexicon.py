"""A word list for the steered decoders (``--lexicon MANIFESTS --lexicon-penalty P``): each word a
hypothesis writes that the list lacks costs P in its joint score.

Why: an LLM that learnt English from its transcripts alone writes what a new accent sounds like
as pieces that make no word ("aving nearly naked stams" for "having nearly naked stems"): in run
14's report of docs/quality.md 44 % of the substitutions on new voices' natural sentences are
words that training never wrote. Decoders with a pronunciation lexicon or a word-level language
model rule such words out; a finite penalty only outweighs them, so that a name the list lacks
is still written where the audio and the LLM insist.

When: a row pays the moment its unfinished word stops being the start of any listed word (a
walk down the list's prefix tree), or when a word that is only such a start ends; once per word.
In beam search a hypothesis on a listed word thus overtakes, at the step it parts from it, one
that has left the list.

How: a word is two polynomial hashes of its characters' ids (``data.ctc_text``), modulo two
primes below 2^31, so that a row's unfinished word grows by a token's characters with one
multiply-add per hash (each token's segment hashes and powers precomputed); a lookup is a
``searchsorted`` in the sorted keys of the list's words and of their prefixes. With 62 bits of
key, a non-word passes for one of ~10^6 prefixes with probability ~10^-13.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..data.ctc_text import CTC_CHARACTERS, spelled, spelled_pieces
from ..data.manifest import read_manifests

MODULI = (2**31 - 1, 2**31 - 19)
BASES = (131, 137)  # above the alphabet's size: every character is a digit of its own


def lexicon_words(paths: str | list[str]) -> set[str]:
    """The words of the transcripts of the manifests ``paths`` (ASR or conversation lines; a
    comma-separated string or a list), spelled as the CTC head spells them."""
    words = set()
    for example in read_manifests(paths, default_prompt=None):
        words.update(spelled(example.answer_text).split())
    return words


def _hashes(word: str) -> list[tuple[int, int]]:
    """The hash pair of each non-empty prefix of ``word``, shortest first."""
    out, h = [], [0, 0]
    for character in word:
        code = CTC_CHARACTERS.index(character) + 1
        h = [(h[i] * BASES[i] + code) % MODULI[i] for i in range(2)]
        out.append((h[0], h[1]))
    return out


def _key(pair) -> int:
    return pair[0] * 2**31 + pair[1]


def _contains(table: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    index = torch.searchsorted(table, keys).clamp(max=len(table) - 1)
    return table[index] == keys


def _keys(h: torch.Tensor) -> torch.Tensor:
    """[..., 2] hash pairs -> [...] keys."""
    return h[..., 0] * 2**31 + h[..., 1]


@dataclass(frozen=True)
class Lexicon:
    """A word list's sorted keys (words, prefixes) and each token's segments of words, for one
    tokenizer's vocabulary, with the penalty a word outside the list costs."""
    words: torch.Tensor  # [W] keys of the words
    prefixes: torch.Tensor  # [P] keys of every non-empty prefix of a word (words included)
    first: torch.Tensor  # [V, 2] hashes of the characters a token adds to the row's word
    first_power: torch.Tensor  # [V, 2] base ** their count
    first_length: torch.Tensor  # [V]
    breaks: torch.Tensor  # [V] bool: the token ends the row's word (a word break in it)
    inner_missing: torch.Tensor  # [V] words between its breaks that the list lacks
    last: torch.Tensor  # [V, 2] hashes of the characters after its last break: the next word's start
    last_length: torch.Tensor  # [V]
    penalty: float = 0.0

    def with_penalty(self, penalty: float) -> Lexicon:
        if penalty <= 0:
            raise ValueError(f'lexicon penalty {penalty}: must be > 0')
        return replace(self, penalty=penalty)


def _segment(text: str) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(hash pair, base ** length pair, length) of ``text``; '' hashes to (0, 0)."""
    prefixes = _hashes(text)
    power = (pow(BASES[0], len(text), MODULI[0]), pow(BASES[1], len(text), MODULI[1]))
    return (prefixes[-1] if prefixes else (0, 0)), power, len(text)


def build_lexicon(words: set[str], tokenizer, vocab_size: int, device) -> Lexicon:
    """The :class:`Lexicon` of ``words`` for the first ``vocab_size`` ids of ``tokenizer``."""
    words = {w for w in words if w}
    if not words:
        raise ValueError('the lexicon holds no word')
    prefixes = [_hashes(w) for w in words]  # each word's prefixes, the word itself last
    word_keys = {_key(p[-1]) for p in prefixes}
    columns = {name: [] for name in ('first', 'first_power', 'first_length', 'breaks', 'inner_missing',
                                     'last', 'last_length')}
    for text in spelled_pieces(tokenizer, vocab_size):
        segments = text.split(' ')  # [the row's word's end] + whole words + [the next word's start]
        first, power, length = _segment(segments[0])
        last, _, last_length = _segment(segments[-1]) if len(segments) > 1 else ((0, 0), None, 0)
        missing = sum(_key(_segment(s)[0]) not in word_keys for s in segments[1:-1] if s)
        for name, value in zip(columns, (first, power, length, len(segments) > 1, missing, last, last_length)):
            columns[name].append(value)
    tensors = {name: torch.tensor(values, device=device) for name, values in columns.items()}
    return Lexicon(torch.tensor(sorted(word_keys), device=device),
                   torch.tensor(sorted({_key(p) for pairs in prefixes for p in pairs}), device=device), **tensors)


@dataclass
class LexiconStep:
    """Candidates' words after a step: what ``LexiconRows.take`` keeps of the chosen ones."""
    hashes: torch.Tensor  # [b, k, 2]
    lengths: torch.Tensor  # [b, k]
    paid: torch.Tensor  # [b, k] bool


class LexiconRows:
    """Each row's unfinished word (hashes, length) and whether it already paid for leaving the list."""

    def __init__(self, lexicon: Lexicon, rows: int, stop: torch.Tensor):
        device = lexicon.words.device
        self.lexicon, self.stop = lexicon, stop
        self.moduli = torch.tensor(MODULI, device=device)
        self.hashes = torch.zeros(rows, 2, dtype=torch.long, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.paid = torch.zeros(rows, dtype=torch.bool, device=device)

    def extend(self, candidates: torch.Tensor) -> tuple[torch.Tensor, LexiconStep]:
        """(penalties [b, k] in score units, the states) of each row's ``candidates`` [b, k]."""
        lex = self.lexicon
        grown = (self.hashes[:, None] * lex.first_power[candidates] + lex.first[candidates]) % self.moduli
        grown_length = self.lengths[:, None] + lex.first_length[candidates]
        unpaid = ~self.paid[:, None]
        ends = lex.breaks[candidates] | self.stop[candidates]  # the word ends: a break, or the text
        not_word = ~_contains(lex.words, _keys(grown)) & (grown_length > 0)
        not_prefix = ~_contains(lex.prefixes, _keys(grown)) & (grown_length > 0)
        next_length = lex.last_length[candidates]
        next_off = ~_contains(lex.prefixes, _keys(lex.last[candidates])) & (next_length > 0)
        ended = (unpaid & not_word).long() + lex.inner_missing[candidates] + next_off.long()
        missing = torch.where(ends, ended, (unpaid & not_prefix).long())
        step = LexiconStep(torch.where(ends[..., None], lex.last[candidates], grown),
                           torch.where(ends, next_length, grown_length),
                           torch.where(ends, next_off, self.paid[:, None] | not_prefix))
        return lex.penalty * missing.double(), step

    def take(self, step: LexiconStep, choice: torch.Tensor, source: torch.Tensor) -> None:
        """Row r goes on with candidate ``choice[r]`` of row ``source[r]``."""
        self.hashes = step.hashes[source, choice]
        self.lengths = step.lengths[source, choice]
        self.paid = step.paid[source, choice]
