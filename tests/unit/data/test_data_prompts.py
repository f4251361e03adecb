"""Prompt templates: exact id layout, placeholder runs, supervised marks, inference prefixes."""

import pytest

from megatron_salm_mtp.data.manifest import Example, Segment
from megatron_salm_mtp.data.prompts import PromptBuilder, required_special_tokens
from megatron_salm_mtp.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
A = TOK.audio_token_id


def asr(prompt='Hi', answer='ok'):
    segs = ([Segment('user', 'text', prompt)] if prompt else []) + [Segment('user', 'audio', 'a.wav'),
                                                                      Segment('assistant', 'text', answer)]
    return Example(tuple(segs), 'm.jsonl', 1)


def b(text):
    return list(text.encode())


def supervised_ids(enc):
    return [i for i, s in zip(enc.ids, enc.supervised) if s]


def test_plain_layout():
    enc = PromptBuilder(TOK, 'plain').encode(asr(), [3])
    assert enc.ids == [TOK.bos_id] + b('Hi') + b(' ') + [A] * 3 + b('\n') + b('ok') + [TOK.eos_id]
    assert supervised_ids(enc) == b('ok') + [TOK.eos_id]
    assert enc.audio_spans == [(4, 3)]


def test_llama3_layout():
    sp = TOK.special_id
    enc = PromptBuilder(TOK, 'llama3', system_prompt='S').encode(asr(prompt=None), [2])

    def head(role):
        return [sp('<|start_header_id|>')] + b(role) + [sp('<|end_header_id|>')] + b('\n\n')
    expected = ([TOK.bos_id] + head('system') + b('S') + [sp('<|eot_id|>')] + head('user') + [A, A]
                + [sp('<|eot_id|>')] + head('assistant') + b('ok') + [sp('<|eot_id|>')])
    assert enc.ids == expected
    assert supervised_ids(enc) == b('ok') + [sp('<|eot_id|>')]


def test_qwen_layout_and_prefix():
    sp = TOK.special_id
    builder = PromptBuilder(TOK, 'qwen')
    enc = builder.encode(asr(), [2])

    def turn(role, body):
        return [sp('<|im_start|>')] + b(role + '\n') + body + [sp('<|im_end|>')] + b('\n')
    assert enc.ids == turn('user', b('Hi ') + [A, A]) + turn('assistant', b('ok'))  # ChatML: no BOS
    assert supervised_ids(enc) == b('ok') + [sp('<|im_end|>')]
    prefix = builder.encode(asr(), [2], with_answer=False)
    assert prefix.ids == enc.ids[: len(prefix.ids)]  # inference prompt is exactly the training prefix
    assert prefix.ids[-len(b('assistant\n')) - 1:] == [sp('<|im_start|>')] + b('assistant\n')


@pytest.mark.parametrize('template', ['plain', 'llama3', 'qwen'])
def test_multi_turn_two_audios(template):
    ex = Example((Segment('user', 'audio', 'x.wav'), Segment('user', 'text', 'vs'), Segment('user', 'audio', 'y.wav'),
                  Segment('assistant', 'text', 'A'), Segment('user', 'text', 'again'),
                  Segment('assistant', 'text', 'B')), 'c.jsonl', 4)
    enc = PromptBuilder(TOK, template).encode(ex, [2, 5])
    assert [n for _, n in enc.audio_spans] == [2, 5]
    for start, n in enc.audio_spans:
        assert enc.ids[start:start + n] == [A] * n
    assert enc.ids.count(A) == 7
    sup = bytes(i for i in supervised_ids(enc) if i < 256)
    assert sup == b'AB'  # both answers supervised, nothing of the prompts
    with pytest.raises(ValueError, match='2 audios but 1 lengths'):
        PromptBuilder(TOK, template).encode(ex, [2])


def test_unknown_template():
    with pytest.raises(ValueError, match='prompt_template'):
        required_special_tokens('vicuna')
