"""NeMo ASR and conversation manifests: fields, path resolution, prompts by task, malformed lines."""

import os

import pytest

from megatron_salm_mtp.data.manifest import ManifestError, read_manifest, read_manifests
from tests.support.data_fixtures import write_manifest


def test_asr_line(tmp_path):
    m = write_manifest(tmp_path / 'm.jsonl', [
        {'audio_filepath': 'sub/a.wav', 'duration': 2.5, 'text': 'hello world', 'offset': 1.0, 'lang': 'en',
         'prompt': 'Write down what is said.', 'speaker': 7},
        '',  # blank lines are allowed
        {'audio_filepath': '/abs/b.wav', 'duration': 1.0, 'text': 'bye'},
    ])
    a, b = read_manifest(m)
    assert [(s.role, s.kind) for s in a.segments] == [('user', 'text'), ('user', 'audio'), ('assistant', 'text')]
    assert a.segments[0].value == 'Write down what is said.'
    audio = a.audios[0]
    assert audio.value == os.path.join(str(tmp_path), 'sub', 'a.wav')
    assert (audio.offset, audio.duration) == (1.0, 2.5)
    assert a.answer_text == 'hello world' and a.meta == {'lang': 'en', 'speaker': 7} and a.line == 1
    assert b.audios[0].value == '/abs/b.wav' and b.line == 3
    assert b.segments[0].value == 'Transcribe the audio.'  # default ASR prompt


def test_task_prompts_and_answer_key(tmp_path):
    m = write_manifest(tmp_path / 'm.jsonl', [
        {'audio_filepath': 'a.wav', 'duration': 1, 'answer': 'hallo', 'taskname': 'ast', 'target_lang': 'German'},
        {'audio_filepath': 'a.wav', 'duration': 1, 'text': 'x', 'question': 'Who speaks?'},
    ])
    ast, qa = read_manifest(m)
    assert ast.segments[0].value == 'Translate the audio into German.' and ast.answer_text == 'hallo'
    assert qa.segments[0].value == 'Who speaks?'
    no_prompt = read_manifest(m.replace('m.jsonl', 'm.jsonl'), default_prompt=None)[1]
    assert no_prompt.segments[0].value == 'Who speaks?'


def test_conversation_line(tmp_path):
    m = write_manifest(tmp_path / 'c.jsonl', [{'id': 'c1', 'conversations': [
        {'from': 'System', 'type': 'text', 'value': 'Be brief.'},
        {'from': 'User', 'type': 'text', 'value': 'Compare'},
        {'from': 'User', 'type': 'audio', 'value': 'x.wav', 'duration': 1.5},
        {'from': 'User', 'type': 'audio', 'value': 'y.wav', 'duration': 0.5, 'offset': 2.0},
        {'from': 'Assistant', 'type': 'text', 'value': 'same speaker'},
        {'from': 'User', 'type': 'text', 'value': 'sure?'},
        {'from': 'Assistant', 'type': 'text', 'value': 'yes'},
    ]}])
    (ex,) = read_manifest(m)
    assert [s.role for s in ex.segments] == ['system', 'user', 'user', 'user', 'assistant', 'user', 'assistant']
    assert [os.path.basename(s.value) for s in ex.audios] == ['x.wav', 'y.wav']
    assert ex.audios[1].offset == 2.0 and ex.answer_text == 'same speaker yes' and ex.meta == {'id': 'c1'}


def test_read_manifests_concatenates(tmp_path):
    a = write_manifest(tmp_path / 'a.jsonl', [{'audio_filepath': 'a.wav', 'duration': 1, 'text': 'a'}])
    b = write_manifest(tmp_path / 'b.jsonl', [{'audio_filepath': 'b.wav', 'duration': 1, 'text': 'b'}] * 2)
    assert [e.answer_text for e in read_manifests(f'{a},{b}')] == ['a', 'b', 'b']


@pytest.mark.parametrize('line,message', [
    ('{"audio_filepath": "a.wav", "text": "x"', 'invalid JSON'),
    ('["a.wav"]', 'expected a JSON object'),
    ('{"text": "x"}', "neither 'audio_filepath' nor 'conversations'"),
    ('{"audio_filepath": "a.wav", "duration": 1}', "missing field 'text'"),
    ('{"audio_filepath": 3, "text": "x"}', "'audio_filepath' must be a string"),
    ('{"audio_filepath": "a.wav", "text": "x", "duration": "long"}', "'duration' must be a non-negative number"),
    ('{"audio_filepath": "a.wav", "text": "x", "offset": -1}', "'offset' must be a non-negative number"),
    ('{"audio_filepath": "a.wav", "text": "x", "taskname": "dance"}', 'unknown task'),
    ('{"conversations": []}', 'non-empty list'),
    ('{"conversations": [{"from": "Robot", "type": "text", "value": "x"}]}', "'from' must be one of"),
    ('{"conversations": [{"from": "User", "type": "video", "value": "x"}]}', "'type' must be 'text' or 'audio'"),
    ('{"conversations": [{"from": "Assistant", "type": "audio", "value": "x.wav"}]}', 'assistant turn'),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = '{"audio_filepath": "a.wav", "duration": 1, "text": "ok"}'
    m = write_manifest(tmp_path / 'bad.jsonl', [good, good, line])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    assert str(e.value).startswith(f'{m}:3: ') and message in str(e.value)
