"""What an audio's CTC head should emit (``--ctc-target-units``), per example.

``tokens`` and ``characters`` come from the transcript; ``phonemes`` from the manifest line's
``phonemes`` field (espeak-ng's IPA of what the voice said: :mod:`.ctc_phonemes`). A line without a
usable field is a bad sample (:class:`CTCTargetError`, which the dataset skips and counts); whether
a manifest carries the field at all is checked once at start (:func:`first_line_without_phonemes`).
"""

from __future__ import annotations

from .ctc_phonemes import PhonemeError, phoneme_ids
from .ctc_text import character_ids
from .manifest import Example, parse_line
from .tokenizer import Tokenizer

TRANSCRIPTION_TASKS = ('asr', 'transcribe')
PHONEMES_FIELD = 'phonemes'
MISSING_PHONEMES = 'missing_phonemes'  # no field, not a string, or empty
UNKNOWN_PHONEME = 'unknown_phoneme'  # a character outside ctc_phonemes.PHONEMES
LINES_CHECKED = 1000  # the start-up check's reach, for manifests that open with text-only lines


class CTCTargetError(ValueError):
    """An example whose CTC targets cannot be made; ``reason`` is one of the dataset's skip reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason, self.detail = reason, detail


def transcribes_one_audio(example: Example) -> bool:
    """Whether the example is one audio and its transcript: the only kind with CTC targets (a
    translation's answer, or one answer for several audios, is no transcript of one audio)."""
    task = example.meta.get('taskname') or example.meta.get('task') or 'asr'
    return len(example.audios) == 1 and str(task).lower() in TRANSCRIPTION_TASKS


def example_phoneme_ids(example: Example) -> list[int]:
    """The ids of the example's ``phonemes`` field; :class:`CTCTargetError` when it has none or
    holds a character outside the inventory."""
    ipa = example.meta.get(PHONEMES_FIELD)
    if not isinstance(ipa, str) or not ipa.strip():
        found = 'no' if ipa is None else f'an empty or non-string ({type(ipa).__name__})'
        raise CTCTargetError(MISSING_PHONEMES, f"{found} '{PHONEMES_FIELD}' field (--ctc-target-units phonemes)")
    try:
        return phoneme_ids(ipa)
    except PhonemeError as e:
        raise CTCTargetError(UNKNOWN_PHONEME, str(e)) from None


def ctc_targets(example: Example, tokenizer: Tokenizer, units: str = 'tokens') -> list[list[int]]:
    """Per audio of ``example``, the ids its CTC head should emit: the answer text (no prompt, no
    end-of-turn token) as token ids or characters, or the line's phonemes (``units``), when the
    example transcribes one audio; else none (``[]``)."""
    if not transcribes_one_audio(example):
        return [[] for _ in example.audios]
    if units == 'phonemes':
        return [example_phoneme_ids(example)]
    if units == 'characters':
        return [character_ids(example.answer_text)]
    return [tokenizer.encode(example.answer_text)]


def first_line_without_phonemes(manifest: str) -> int | None:
    """The line number of ``manifest``'s first transcription line if it lacks the ``phonemes``
    field, else None (checks the first such line within :data:`LINES_CHECKED`; a later line
    without it is the dataset's counted skip). Raises ManifestError on a malformed line."""
    with open(manifest, encoding='utf-8') as f:
        for number, text in enumerate(f, start=1):
            if number > LINES_CHECKED:
                return None
            if not text.strip():
                continue
            example = parse_line(text, manifest, number)
            if transcribes_one_audio(example):
                return None if PHONEMES_FIELD in example.meta else number
    return None
