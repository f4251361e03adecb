"""Manifests: NeMo-style ASR/AST JSONL and NeMo multi-turn conversation JSONL, one model for both.

Why one model: the prompt builder and the dataset should not care which file format a sample came
from. Every line becomes an :class:`Example`: an ordered list of :class:`Segment` (role, text or
audio), the way NeMo's multimodal conversations are stored. An ASR line::

    {"audio_filepath": "a.wav", "duration": 2.1, "text": "hello", "offset": 0.5, "lang": "en",
     "prompt": "Transcribe the audio."}

becomes ``user: [prompt text, audio]`` + ``assistant: [text]``. ``question``/``context`` are accepted
for the prompt and ``answer`` for the target (NeMo SpeechLLM manifests); with no prompt, a default
per ``taskname``/``task`` is used. A conversation line (NeMo's ``NeMoMultimodalConversationJsonlAdapter``
schema)::

    {"id": "c1", "conversations": [
        {"from": "User", "type": "text", "value": "What is said here?"},
        {"from": "User", "type": "audio", "value": "a.wav", "duration": 2.1},
        {"from": "Assistant", "type": "text", "value": "hello"}]}

Relative audio paths resolve against the manifest's folder. ``offset`` slices the file from that
point for ``duration`` seconds; without ``offset`` the whole file is used and ``duration`` is only a
hint (the header decides), as NeMo does. A malformed line raises :class:`ManifestError` naming file
and line; bad *samples* (missing audio, empty text...) are the dataset's business, not errors here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

ROLES = ('system', 'user', 'assistant')

DEFAULT_TASK_PROMPTS = {
    'asr': 'Transcribe the audio.',
    'transcribe': 'Transcribe the audio.',
    'ast': 'Translate the audio into {target_lang}.',
    's2t_translation': 'Translate the audio into {target_lang}.',
    'translate': 'Translate the audio into {target_lang}.',
}
_PROMPT_KEYS = ('prompt', 'question', 'context')
_ANSWER_KEYS = ('text', 'answer')
_TASK_KEYS = ('taskname', 'task')


class ManifestError(ValueError):
    """A manifest line that cannot be understood; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class Segment:
    """One piece of a turn: text, or an audio file (optionally a slice of it)."""

    role: str  # "system" | "user" | "assistant"
    kind: str  # "text" | "audio"
    value: str  # the text, or the resolved audio path
    offset: float | None = None
    duration: float | None = None


@dataclass(frozen=True)
class Example:
    segments: tuple[Segment, ...]
    source: str  # manifest path
    line: int  # 1-based line number in ``source``
    meta: dict = field(default_factory=dict, compare=False)  # other fields: lang, subset, id...

    @property
    def audios(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == 'audio']

    @property
    def answer_text(self) -> str:
        return ' '.join(s.value for s in self.segments if s.role == 'assistant' and s.kind == 'text')

    @property
    def where(self) -> str:
        return f'{self.source}:{self.line}'


def _number(obj: dict, key: str, where: str, required: bool = False) -> float | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise ManifestError(f"{where}: missing field '{key}'")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        raise ManifestError(f"{where}: field '{key}' must be a non-negative number, got {v!r}")
    return float(v)


def _string(obj: dict, key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise ManifestError(f"{where}: field '{key}' must be a string, got {type(v).__name__}")
    return v


def _resolve(path: str, manifest_dir: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(manifest_dir, path))


def _parse_asr(obj: dict, where: str, manifest_dir: str, default_prompt: str | None) -> tuple[list[Segment], dict]:
    audio = _resolve(_string(obj, 'audio_filepath', where), manifest_dir)
    offset = _number(obj, 'offset', where)
    duration = _number(obj, 'duration', where)
    answer_key = next((k for k in _ANSWER_KEYS if k in obj), None)
    if answer_key is None:
        raise ManifestError(f"{where}: missing field 'text' (or 'answer')")
    answer = _string(obj, answer_key, where)
    prompt_key = next((k for k in _PROMPT_KEYS if k in obj), None)
    if prompt_key is not None:
        prompt = _string(obj, prompt_key, where)
    else:
        task = next((obj[k] for k in _TASK_KEYS if k in obj), None)
        if task is not None and not isinstance(task, str):
            raise ManifestError(f'{where}: task field must be a string, got {task!r}')
        template = DEFAULT_TASK_PROMPTS.get(task.lower()) if task else None
        if task and template is None:
            raise ManifestError(f"{where}: unknown task {task!r} and no 'prompt' "
                                f"(known: {sorted(DEFAULT_TASK_PROMPTS)})")
        prompt = template if template is not None else default_prompt
        if prompt and '{target_lang}' in prompt:
            prompt = prompt.format(target_lang=obj.get('target_lang') or obj.get('lang') or 'English')
    segments = []
    if prompt:
        segments.append(Segment('user', 'text', prompt))
    segments.append(Segment('user', 'audio', audio, offset, duration))
    segments.append(Segment('assistant', 'text', answer))
    meta = {k: v for k, v in obj.items() if k not in ('audio_filepath', 'offset', 'duration', answer_key, prompt_key)}
    return segments, meta


def _parse_conversation(obj: dict, where: str, manifest_dir: str) -> tuple[list[Segment], dict]:
    turns = obj['conversations']
    if not isinstance(turns, list) or not turns:
        raise ManifestError(f"{where}: 'conversations' must be a non-empty list")
    segments = []
    for i, t in enumerate(turns):
        w = f'{where}: conversations[{i}]'
        if not isinstance(t, dict):
            raise ManifestError(f'{w}: expected an object, got {type(t).__name__}')
        role = str(t.get('from', '')).lower()
        if role not in ROLES:
            raise ManifestError(f"{w}: 'from' must be one of User/Assistant/System, got {t.get('from')!r}")
        kind = t.get('type')
        value = _string(t, 'value', w)
        if kind == 'text':
            segments.append(Segment(role, 'text', value))
        elif kind == 'audio':
            if role == 'assistant':
                raise ManifestError(f'{w}: audio in an assistant turn is not supported (speech output)')
            segments.append(Segment(role, 'audio', _resolve(value, manifest_dir),
                                    _number(t, 'offset', w), _number(t, 'duration', w)))
        else:
            raise ManifestError(f"{w}: 'type' must be 'text' or 'audio', got {kind!r}")
    return segments, {k: v for k, v in obj.items() if k != 'conversations'}


def parse_line(text: str, source: str, line: int, default_prompt: str | None = DEFAULT_TASK_PROMPTS['asr']) -> Example:
    """One JSONL line -> :class:`Example`; :class:`ManifestError` names ``source:line`` on failure."""
    where = f'{source}:{line}'
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f'{where}: invalid JSON ({e.msg} at column {e.colno})') from None
    if not isinstance(obj, dict):
        raise ManifestError(f'{where}: expected a JSON object, got {type(obj).__name__}')
    manifest_dir = os.path.dirname(os.path.abspath(source))
    if 'conversations' in obj:
        segments, meta = _parse_conversation(obj, where, manifest_dir)
    elif 'audio_filepath' in obj:
        segments, meta = _parse_asr(obj, where, manifest_dir, default_prompt)
    else:
        raise ManifestError(f"{where}: neither 'audio_filepath' nor 'conversations' present")
    return Example(tuple(segments), source, line, meta)


def read_manifest(path: str, default_prompt: str | None = DEFAULT_TASK_PROMPTS['asr']) -> list[Example]:
    """All examples of one JSONL file (blank lines skipped)."""
    examples = []
    with open(path, encoding='utf-8') as f:
        for n, text in enumerate(f, start=1):
            if text.strip():
                examples.append(parse_line(text, path, n, default_prompt))
    return examples


def read_manifests(paths: str | list[str], default_prompt: str | None = DEFAULT_TASK_PROMPTS['asr']) -> list[Example]:
    """Concatenate manifests; ``paths`` may be a list or a comma-separated string."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(',') if p]
    out = []
    for p in paths:
        out.extend(read_manifest(p, default_prompt))
    return out


def write_manifest(path: str, rows: list[dict]) -> None:
    """Write dicts as JSONL (UTF-8, one object per line)."""
    with open(path, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')
