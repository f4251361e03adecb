"""Phoneme targets for the CTC head (``--ctc-target-units phonemes``).

Why phonemes: espeak-ng's English accents differ mainly in their letter-to-sound rules ("the
drunken men" is ``ðə dɹˈʌŋkən mˈɛn`` in en-us, ``ðə dɹˈʊŋkən mˈɛn`` in en-gb-x-gbcwmd). On letters
the encoder must learn each accent's spelling rules, and an accent it never heard is one whose
rules it does not know; on phonemes it is told what was said. A manifest line carries them in its
``phonemes`` field, as ``espeak-ng -v VOICE -q --ipa TEXT`` prints them (clause lines joined by
single spaces).

Units: one per Unicode code point, after dropping the stress marks ˈ ˌ (suprasegmental: they
belong to no acoustic segment of their own, and would only add classes for CTC to place) and
folding espeak's ASCII length mark ``:`` (the Scottish table's ``a:``) into ``ː``. Combining marks
(nasal ̃, syllabic ̩, dental ̪) are units of their own after their base letter: they are rare, and
a class per marked letter would split the base letter's examples. Input is NFD-normalised first,
so a precomposed letter (``õ``) reads as its base and its mark. Whitespace runs are one space (a
word boundary), as ``ctc_text`` does for characters.
"""

from __future__ import annotations

import re
import unicodedata

PHONEMES = (' abdefhijklmnoprstuvwxzæðŋɐɑɒɔəɚɛɜɡɪɹɾʃʉʊʌʍʒʔʲː'
            '\u0303\u0329\u032aθᵻ')
"""The inventory, sorted by code point; a phoneme's id is its index (the CTC blank comes after the
last). Every character espeak-ng 1.51 printed, less the stress marks and ``:``, for 91,000 lines
with each English voice of ``espeak-ng --voices=en`` that speaks here (en-gb, en-us, en-029,
en-gb-scotland, en-gb-x-gbclan, en-gb-x-gbcwmd, en-gb-x-rp, en-us-nyc; its mbrola voices need the
mbrola program and share these voices' phoneme tables). The lines: WordNet 3.0's 42,105 usage
sentences, the 44,696 words of its sentences and glosses, 4,071 name words (the corpus's text
pools, ``tools/corpus/text_source.py``), the numbers 0-2099 and digit strings; en-us also read
20,000 glosses. Made with::

    for v in en-gb en-us en-029 en-gb-scotland en-gb-x-gbclan en-gb-x-gbcwmd en-gb-x-rp en-us-nyc; do
        espeak-ng -v $v -q --ipa -f texts.txt; done |
    python3 -c 'import sys; print("".join(sorted(set(sys.stdin.read()) - set("\\nˈˌ:"))))'
"""
STRESS_MARKS = 'ˈˌ'
LENGTH_MARK = 'ː'

_INDEX = {p: i for i, p in enumerate(PHONEMES)}
_FOLD = str.maketrans({**{mark: None for mark in STRESS_MARKS}, ':': LENGTH_MARK})
_SPACES = re.compile(r'\s+')


class PhonemeError(ValueError):
    """IPA text holding a character outside :data:`PHONEMES`; the message names it."""


def phoneme_ids(ipa: str) -> list[int]:
    """``ipa`` (espeak-ng's ``--ipa`` output) as ids of :data:`PHONEMES` (see the module docstring)."""
    text = _SPACES.sub(' ', unicodedata.normalize('NFD', ipa).translate(_FOLD)).strip()
    unknown = sorted(set(text) - _INDEX.keys())
    if unknown:
        names = ', '.join(f'{c!r} (U+{ord(c):04X})' for c in unknown)
        raise PhonemeError(f'{names} not in the phoneme inventory (data/ctc_phonemes.py) in {ipa!r}')
    return [_INDEX[p] for p in text]
