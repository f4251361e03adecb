"""The espeak-ng voices of the synthetic corpus: English base voices times voice variants.

A voice is ``BASE`` or ``BASE+VARIANT`` (``en-us+m3``). The lists are fixed here, not read from the
machine, so a corpus does not silently change with the espeak-ng installed; a voice whose file is
missing from espeak-ng's data folder is skipped with a warning naming it, and ``corpus.json``
records the voices used.

- Base voices: every English voice of espeak-ng 1.51's own synthesiser (``lang/gmw/en*``). Not used:
  the ``mb-*`` voices that ``espeak-ng --voices=en`` also lists, which need the separate MBROLA
  program and its voice databases.
- Variants: every file of ``voices/!v`` except those that do not sound like a human speaker
  (``EXCLUDED_VARIANTS``): the two whispers (no voiced sound at all: a pitch tracker finds no voiced
  frame in them), the robot and effect voices (``robosoft*``, ``UniRobot``, ``anikaRobot``,
  ``Demonic``: full-gain 8-40 ms echoes and fixed tone filters; ``announcer`` and ``RicishayMax*``:
  100-200 ms echoes, a second copy of the speech) and ``fast`` (a speed-test switch, not a voice).
- Held out for ``test_unseen``: two base voices and a dozen variants (men and women) that no other
  split uses. ``test_unseen`` draws from the voices with a held-out base *or* a held-out variant,
  the other splits from the rest, so no voice of ``test_unseen`` is ever trained on.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

BASE_VOICES = {  # voice name -> file under espeak-ng-data/lang
    'en-gb': 'gmw/en', 'en-us': 'gmw/en-US', 'en-gb-scotland': 'gmw/en-GB-scotland',
    'en-gb-x-gbclan': 'gmw/en-GB-x-gbclan', 'en-gb-x-gbcwmd': 'gmw/en-GB-x-gbcwmd',
    'en-gb-x-rp': 'gmw/en-GB-x-rp', 'en-029': 'gmw/en-029', 'en-us-nyc': 'gmw/en-US-nyc',
}
VARIANTS = tuple("""adam Alex Alicia Andrea Andy anika Annie antonio AnxiousAndy aunty belinda benjamin boris
    caleb croak david Denis Diogo ed edward edward2 f1 f2 f3 f4 f5 Gene Gene2 grandma grandpa gustave
    Henrique Hugo iven iven2 iven3 iven4 Jacky john kaukovalta klatt klatt2 klatt3 klatt4 klatt5 klatt6
    Lee linda m1 m2 m3 m4 m5 m6 m7 m8 marcelo Marco Mario max Michael michel miguel Mike""".split()) + (
    'Mr serious',) + tuple("""Nguyen norbert pablo paul pedro quincy rob robert sandro shelby steph
    steph2 steph3 Storm travis Tweaky victor zac""".split())
EXCLUDED_VARIANTS = tuple("""whisper whisperf robosoft robosoft2 robosoft3 robosoft4 robosoft5 robosoft6
    robosoft7 robosoft8 UniRobot anikaRobot Demonic announcer RicishayMax RicishayMax2 RicishayMax3
    fast""".split())
HELD_OUT_BASES = ('en-gb-x-gbcwmd', 'en-us-nyc')
HELD_OUT_VARIANTS = ('f3', 'm4', 'Andrea', 'aunty', 'shelby', 'Henrique', 'iven3', 'klatt3', 'Mario',
                     'norbert', 'quincy', 'travis')
NO_VARIANT = ''


def voice_name(base: str, variant: str) -> str:
    return f'{base}+{variant}' if variant else base


def voice_parts(name: str) -> tuple[str, str]:
    """(base, variant) of a voice name (:func:`voice_name`'s inverse; variant '' for none)."""
    base, _, variant = name.partition('+')
    return base, variant


def available(data_dir: str | None, bases=tuple(BASE_VOICES),
              variants=VARIANTS) -> tuple[list[str], list[str], list[str]]:
    """(bases, variants present in ``data_dir``, names of the missing ones). espeak-ng itself would
    not say: an unknown variant falls back to the plain base voice without an error."""
    if data_dir is None:  # the backend cannot tell where its data is: trust the lists
        return list(bases), list(variants), []
    have_base = [b for b in bases if os.path.isfile(os.path.join(data_dir, 'lang', BASE_VOICES[b]))]
    have_variant = [v for v in variants if os.path.isfile(os.path.join(data_dir, 'voices', '!v', v))]
    missing = [b for b in bases if b not in have_base] + [f'+{v}' for v in variants if v not in have_variant]
    return have_base, have_variant, missing


def split_voices(bases: list[str], variants: list[str]) -> dict[str, list[str]]:
    """Voice names per split: ``seen`` (train, valid, test) and ``unseen`` (test_unseen)."""
    seen, unseen = [], []
    for base in bases:
        for variant in [NO_VARIANT] + variants:
            held = base in HELD_OUT_BASES or variant in HELD_OUT_VARIANTS
            (unseen if held else seen).append(voice_name(base, variant))
    return {'seen': seen, 'unseen': unseen}


def corpus_voices(data_dir: str | None) -> tuple[dict[str, list[str]], list[str]]:
    """Voices per split on this machine, and the missing ones (each named in a warning)."""
    bases, variants, missing = available(data_dir)
    for name in missing:
        logger.warning('espeak-ng voice %s is missing in %s: skipped (the corpus uses the others)', name, data_dir)
    voices = split_voices(bases, variants)
    empty = [k for k, v in voices.items() if not v]
    if empty:
        raise RuntimeError(f"no espeak-ng voice left for the {' and '.join(empty)} voices in {data_dir} "
                           f"(missing: {', '.join(missing)})")
    return voices, missing
