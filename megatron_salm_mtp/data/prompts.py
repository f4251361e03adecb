"""Prompt templates: an :class:`~.manifest.Example` -> token ids, supervision marks, audio runs.

Why the template builds ids (not a string then tokenised): audio placeholders must appear as exactly
``audio_tokens(mel_frames, stack)`` ids each, and turn markers must be the special ids, never text
that a tokenizer might split. Text pieces are tokenised one by one with ``encode``.

Supervised = what the model must learn to produce: each assistant turn's text plus the token that
ends it (EOS for ``plain``, ``<|eot_id|>`` for ``llama3``, ``<|im_end|>`` for ``qwen``). The role
headers before an answer are prompt, not targets: inference feeds them (``with_answer=False``).

Templates (``name`` in config ``prompt_template``):

- ``plain``:  ``[BOS] {user}\\n{answer}EOS`` per turn pair; the tiny-model default (fewest tokens).
- ``llama3``: ``<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
- ``qwen``:   ChatML ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` (no BOS).

Inside a turn, consecutive pieces (text, audio) are separated by one space, as NeMo joins them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import Example, Segment
from .tokenizer import Tokenizer

TEMPLATES = ('plain', 'llama3', 'qwen')
_SPECIALS = {
    'plain': (),
    'llama3': ('<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'),
    'qwen': ('<|im_start|>', '<|im_end|>'),
}


def required_special_tokens(template: str) -> tuple[str, ...]:
    """Special tokens the tokenizer must provide for ``template`` (pass to ``build_tokenizer``)."""
    if template not in _SPECIALS:
        raise ValueError(f'prompt_template must be one of {TEMPLATES}, got {template!r}')
    return _SPECIALS[template]


@dataclass
class Encoded:
    ids: list[int] = field(default_factory=list)
    supervised: list[bool] = field(default_factory=list)  # per id: is it an answer (target) token
    audio_spans: list[tuple[int, int]] = field(default_factory=list)  # (start, length) per audio

    def add(self, ids, supervised: bool = False) -> None:
        self.ids.extend(ids)
        self.supervised.extend([supervised] * len(ids))


def _turns(example: Example, system_prompt: str | None) -> list[tuple[str, list]]:
    """Group consecutive segments of the same role into turns ``(role, [segments])``."""
    turns: list[tuple[str, list]] = []
    for seg in example.segments:
        if turns and turns[-1][0] == seg.role:
            turns[-1][1].append(seg)
        else:
            turns.append((seg.role, [seg]))
    if system_prompt and (not turns or turns[0][0] != 'system'):
        turns.insert(0, ('system', [Segment('system', 'text', system_prompt)]))
    return turns


class PromptBuilder:
    """Encodes examples with one template; ``audio_lengths`` gives each audio's placeholder count."""

    def __init__(self, tokenizer: Tokenizer, template: str = 'plain', system_prompt: str | None = None):
        required_special_tokens(template)  # validates the name
        self.tok, self.template, self.system_prompt = tokenizer, template, system_prompt
        self._sp = {t: tokenizer.special_id(t) for t in _SPECIALS[template]}

    def _content(self, out: Encoded, segments, audio_lengths, audio_index: list[int], supervised: bool) -> None:
        for k, seg in enumerate(segments):
            if k:
                out.add(self.tok.encode(' '), supervised)
            if seg.kind == 'audio':
                n = audio_lengths[audio_index[0]]
                audio_index[0] += 1
                out.audio_spans.append((len(out.ids), n))
                out.add([self.tok.audio_token_id] * n)
            else:
                out.add(self.tok.encode(seg.value), supervised)

    def _header(self, out: Encoded, role: str) -> None:
        if self.template == 'llama3':
            out.add([self._sp['<|start_header_id|>']])
            out.add(self.tok.encode(role))
            out.add([self._sp['<|end_header_id|>']])
            out.add(self.tok.encode('\n\n'))
        elif self.template == 'qwen':
            out.add([self._sp['<|im_start|>']])
            out.add(self.tok.encode(role + '\n'))

    def _end_of_turn(self, out: Encoded, role: str) -> None:
        sup = role == 'assistant'
        if self.template == 'plain':
            if role == 'assistant':
                out.add([self.tok.eos_id], True)
            else:
                out.add(self.tok.encode('\n'))
        elif self.template == 'llama3':
            out.add([self._sp['<|eot_id|>']], sup)
        else:
            out.add([self._sp['<|im_end|>']], sup)
            out.add(self.tok.encode('\n'))

    def encode(self, example: Example, audio_lengths: list[int], with_answer: bool = True) -> Encoded:
        """Ids of the whole example; with ``with_answer=False`` stop where the last answer would begin."""
        if len(audio_lengths) != len(example.audios):
            raise ValueError(f'{example.where}: {len(example.audios)} audios but {len(audio_lengths)} lengths')
        out = Encoded()
        if self.tok.bos_id is not None and self.template != 'qwen':
            out.add([self.tok.bos_id])
        turns = _turns(example, self.system_prompt)
        if not with_answer:
            while turns and turns[-1][0] == 'assistant':
                turns.pop()
        index = [0]
        for role, segments in turns:
            self._header(out, role)
            self._content(out, segments, audio_lengths, index, supervised=role == 'assistant')
            self._end_of_turn(out, role)
        if not with_answer:
            self._header(out, 'assistant')
        return out
