"""Cleaning of source English into what the synthetic corpus speaks and transcribes.

A pool entry is the *spoken* form: words plus the marks that shape espeak-ng's prosody (``, ; : ?
! .``). Its *transcript* (:func:`transcript`) drops those marks: words, digits and word-internal
apostrophes, separated by single spaces, with the source's capitals on names and on ``I``.

Why these rules:

- Numbers are written one way: a numeral stays digits (thousands separators removed, ``100,000`` ->
  ``100000``), a number word stays a word, as in the source; espeak-ng reads the digits aloud, and
  the evaluation's normaliser maps spoken and written forms. Sentences with numbers in other shapes
  (decimals, ordinals such as ``19th``, ``$``, ``%``) are dropped: espeak's reading of them and a
  transcript would not agree on one form.
- Hyphens become spaces (``rear-ended`` -> ``rear ended``), as the normaliser splits them too.
- Acronyms (two or more capitals in a word) are dropped: espeak spells some and reads others as words.
- Parenthesised asides are removed; anything else outside letters, digits and the marks above, and
  any inner full stop (abbreviations, several sentences) drops the sentence.
"""

from __future__ import annotations

import re

PROSODY_MARKS = ',;:?!.'
MIN_WORDS, MAX_WORDS = 3, 30

_ASIDE = re.compile(r'\s*\([^()]*\)')
_THOUSANDS = re.compile(r'(?<=\d),(?=\d{3}\b)')
_ALLOWED = re.compile(r"[A-Za-z0-9' ,.?!;:-]+")
# a token: quotes, a word (letters with inner apostrophes) or a number, marks and quotes after it
_TOKEN = r"'*(?:[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]+)'*[,;:?!.]*'*"
_TOKENS = re.compile(rf'{_TOKEN}(?: {_TOKEN})*')
_ACRONYM = re.compile(r"[A-Z][A-Za-z']*[A-Z]")  # two capitals in one token
_QUOTE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])")  # an apostrophe not inside a word
_MARK_RUN = re.compile(r'([,;:?!.])[,;:?!.]+')
_NO_MARKS = str.maketrans('', '', PROSODY_MARKS)
_FIRST_PERSON = {'I', "I'm", "I've", "I'd", "I'll"}


def clean_text(raw: str) -> str | None:
    """Spoken form of ``raw``, or None when it breaks a rule of the module docstring."""
    s = _THOUSANDS.sub('', _ASIDE.sub('', raw.strip()).replace('`', "'"))
    if not s.isascii() or not _ALLOWED.fullmatch(s):
        return None
    s = ' '.join(s.replace('-', ' ').split()).strip(' ,;:')
    if '.' in s.rstrip('.?!') or not _TOKENS.fullmatch(s) or _ACRONYM.search(s):
        return None
    s = _MARK_RUN.sub(r'\1', _QUOTE.sub('', s))
    return s if MIN_WORDS <= s.count(' ') + 1 <= MAX_WORDS else None


def transcript(spoken: str) -> str:
    """The words of a spoken form, without prosody marks."""
    return ' '.join(spoken.translate(_NO_MARKS).split())


def lowercase_words(spoken_texts) -> set[str]:
    """Words the texts write in lower case somewhere: a capital on them is only sentence-initial."""
    return {w for s in spoken_texts for w in s.translate(_NO_MARKS).split() if w.islower()}


def decapitalise_first(spoken: str, lowercase: set[str]) -> str:
    """Lower-case a sentence-initial capital unless the word is a name (never lower case) or ``I``."""
    first, _, rest = spoken.partition(' ')
    word = first.rstrip(PROSODY_MARKS)
    if word[:1].isupper() and word not in _FIRST_PERSON and word.lower() in lowercase:
        first = first.lower()
    return f'{first} {rest}' if rest else first
