"""``python -m megatron_salm_mtp.transcribe``: audio files in, transcripts out, no manifest.

The transcripts must be what ``evaluate`` writes as ``pred_text`` for a manifest of the same files
(same prompt, same greedy decoding), and speculative decoding must give the same text (fp32).
"""

import json
import subprocess

import pytest

from megatron_salm_mtp import evaluate, transcribe
from megatron_salm_mtp.data.audio import write_wav
from tests.support.data_fixtures import tone, write_manifest
from tests.support.process import child_env, rank_launcher, support_script


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('transcribe') / 'ckpt')
    launcher, rank_env = rank_launcher(1)
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    cmd = launcher + [support_script('inference_ckpt.py'), '--out', out, '--ctc-loss-weight', '0.3']
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope='module')
def audio_files(tmp_path_factory):
    soundfile = pytest.importorskip('soundfile')
    folder = tmp_path_factory.mktemp('audio')
    paths = [str(folder / 'a.wav'), str(folder / 'b.flac'), str(folder / 'c.wav')]
    write_wav(paths[0], tone(0.9, freq=330, seed=1), 16000)
    soundfile.write(paths[1], tone(1.3, rate=22050, freq=520, seed=2), 22050, format='FLAC')  # resampled
    write_wav(paths[2], tone(0.7, freq=410, seed=3), 16000)
    return paths


def _transcripts(capsys, argv):
    transcribe.main(argv)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_transcripts_match_evaluate_on_a_manifest(single_rank_parallel, checkpoint, audio_files, tmp_path, capsys):
    manifest = write_manifest(tmp_path / 'files.jsonl', [{'audio_filepath': p, 'text': 'x'} for p in audio_files])
    evaluate.main(['--load', checkpoint, '--manifest', manifest, '--max-new-tokens', '8', '--warmup-batches', '0',
                   '--batch-size', '2', '--out', str(tmp_path / 'report.json'),
                   '--out-manifest', str(tmp_path / 'pred.jsonl'), '--ctc-joint-weight', '0.5',
                   '--ctc-beam-size', '1', '3'])
    capsys.readouterr()
    with open(tmp_path / 'pred.jsonl') as f:
        expected = [json.loads(line)['pred_text'] for line in f]
    hypotheses = json.loads((tmp_path / 'report.json').read_text())['hypotheses']
    steered, beam = ([h[mode] for h in hypotheses] for mode in ('ctc_joint_0.5', 'ctc_joint_0.5_beam3'))
    greedy = _transcripts(capsys, ['--load', checkpoint, '--max-new-tokens', '8', '--json'] + audio_files)
    assert [r['audio_filepath'] for r in greedy] == audio_files
    assert [r['pred_text'] for r in greedy] == expected and any(expected)
    assert [r['duration'] for r in greedy] == [0.9, 1.3, 0.7]
    speculative = _transcripts(capsys, ['--load', checkpoint, '--max-new-tokens', '8', '--json', '--speculative',
                                        '--batch-size', '2'] + audio_files)
    assert [r['pred_text'] for r in speculative] == expected
    joint = _transcripts(capsys, ['--load', checkpoint, '--max-new-tokens', '8', '--json', '--ctc-joint-weight', '0.5',
                                  '--batch-size', '2'] + audio_files)
    assert [r['pred_text'] for r in joint] == steered
    searched = _transcripts(capsys, ['--load', checkpoint, '--max-new-tokens', '8', '--json', '--ctc-joint-weight',
                                     '0.5', '--ctc-beam-size', '3'] + audio_files)
    assert [r['pred_text'] for r in searched] == beam


def test_a_word_list_steers_transcribe_as_it_steers_evaluate(single_rank_parallel, checkpoint, audio_files,
                                                             tmp_path, capsys):
    words = write_manifest(tmp_path / 'words.jsonl', [{'audio_filepath': 'x.wav', 'text': 'the cat sat'}])
    manifest = write_manifest(tmp_path / 'files.jsonl', [{'audio_filepath': p, 'text': 'x'} for p in audio_files])
    steering = ['--ctc-joint-weight', '0.5', '--lexicon', words]
    evaluate.main(['--load', checkpoint, '--manifest', manifest, '--max-new-tokens', '8', '--warmup-batches', '0',
                   '--batch-size', '2', '--out', str(tmp_path / 'report.json'), *steering, '--ctc-beam-size', '1', '3',
                   '--lexicon-penalty', '2', '30'])
    capsys.readouterr()
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['lexicon'] == {'manifests': words, 'words': 3}
    assert {'ctc_joint_0.5_lex2', 'ctc_joint_0.5_beam3_lex2', 'ctc_joint_0.5_lex30'} < set(report['modes'])
    searched = _transcripts(capsys, ['--load', checkpoint, '--max-new-tokens', '8', '--json', *steering,
                                     '--lexicon-penalty', '2', '--ctc-beam-size', '3'] + audio_files)
    assert [r['pred_text'] for r in searched] == [h['ctc_joint_0.5_beam3_lex2'] for h in report['hypotheses']]
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{not json\n')
    with pytest.raises(SystemExit):
        transcribe.main(['--load', checkpoint, '--ctc-joint-weight', '0.5', '--lexicon', str(bad),
                         '--lexicon-penalty', '2', audio_files[0]])
    assert f'--lexicon {bad}: {bad}:1: invalid JSON' in capsys.readouterr().err


def test_plain_output_and_unreadable_files(single_rank_parallel, checkpoint, audio_files, tmp_path, capsys):
    broken = tmp_path / 'broken.wav'
    broken.write_bytes(b'RIFF....not audio')
    transcribe.main(['--load', checkpoint, '--max-new-tokens', '4', audio_files[0], str(broken)])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(audio_files[0] + '\t')


@pytest.mark.parametrize('argv, message', [
    (['no/such.wav'], 'no/such.wav: no such file'),
    (['--mtp-draft-depth', '2', '{wav}'], '--mtp-draft-depth needs --speculative'),
    (['--batch-size', '0', '{wav}'], '--batch-size 0: must be >= 1'),
    (['--ctc-joint-weight', '1.5', '{wav}'], '--ctc-joint-weight 1.5: must be in (0, 1]'),
    (['--ctc-joint-weight', '0.3', '--speculative', '{wav}'], '--ctc-joint-weight and --speculative: choose one'),
])
def test_bad_arguments_are_named(checkpoint, audio_files, capsys, argv, message):
    with pytest.raises(SystemExit):
        transcribe.main(['--load', checkpoint] + [a.format(wav=audio_files[0]) for a in argv])
    assert message in capsys.readouterr().err
