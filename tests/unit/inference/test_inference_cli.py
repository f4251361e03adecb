"""``python -m megatron_salm_mtp.evaluate`` end to end: a checkpoint saved at TP=2 by two gloo
processes, decoded at TP=1 greedily and speculatively into one report; two splits with the audio
ablation, a skipped line and the predictions manifest; bad input named before decoding."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from megatron_salm_mtp import evaluate
from megatron_salm_mtp.checkpoint.metadata import latest_checkpoint
from megatron_salm_mtp.data.audio import write_wav
from megatron_salm_mtp.inference.wer import Scores
from tests.support.data_fixtures import tone, write_manifest
from tests.support.parallel_utils import tiny_config
from tests.support.process import ROOT, child_env, free_port, preimported_python, support_script

SUBSETS = ('natural', 'digits', 'natural', 'names')
ACCENTS = ('north', 'south', 'north', 'south')  # the test split's; test_unseen's lines name none


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('eval_corpus')
    rows = []
    for i, subset in enumerate(SUBSETS):
        write_wav(str(folder / f'{i}.wav'), tone(0.8 + 0.3 * i, freq=300 + 50 * i, seed=i), 16000)
        rows.append({'audio_filepath': f'{i}.wav', 'text': f'say {i} now', 'subset': subset, 'accent': ACCENTS[i]})
    return write_manifest(folder / 'test.jsonl', rows)


@pytest.fixture(scope='module')
def unseen_manifest(tmp_path_factory):
    """A second split: three utterances, one of whose audio is missing."""
    folder = tmp_path_factory.mktemp('unseen_corpus')
    rows = []
    for i, subset in enumerate(('natural', 'wordlist', 'natural')):
        if i != 1:
            write_wav(str(folder / f'{i}.wav'), tone(0.6 + 0.4 * i, freq=500 + 70 * i, seed=10 + i), 16000)
        rows.append({'audio_filepath': f'{i}.wav', 'text': f'Call {i} 5, colour!', 'subset': subset, 'id': i})
    return write_manifest(folder / 'test_unseen.jsonl', rows)


@pytest.fixture(scope='module')
def tp2_checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('tp2') / 'ckpt')
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2',
           f'--master-port={free_port()}', support_script('inference_ckpt.py'), '--out', out,
           '--tensor-model-parallel-size', '2']
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_report_from_a_tp2_checkpoint(single_rank_parallel, tp2_checkpoint, manifest, tmp_path, capsys):
    out = str(tmp_path / 'report.json')
    evaluate.main(['--load', tp2_checkpoint, '--manifest', manifest, '--speculative',
                   '--batch-size', '3', '--max-new-tokens', '6', '--warmup-batches', '0', '--out', out])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['report'] == out
    with open(out) as f:
        report = json.load(f)
    assert report['utterances'] == 4 and report['draft_depth'] == report['mtp_depths_trained'] == 2
    greedy, speculative = report['modes']['greedy'], report['modes']['speculative']
    for figures in (greedy, speculative):
        assert set(figures['subsets']) == {'natural', 'digits', 'names'}
        assert figures['subsets']['natural']['utterances'] == 2
        assert 0 <= figures['wer'] and figures['decode_tokens_per_s'] > 0 and figures['real_time_factor'] > 0
        assert figures['generated_tokens'] == 4 * 6  # random weights: no stop id within 6 tokens
    assert greedy['tokens_per_trunk_forward'] == 1.0 and report['greedy_width'] == 3
    for figures in (greedy, speculative):  # the batch's audio encoding and prefill timed apart
        assert figures['encode_seconds'] > 0 and figures['prefill_seconds'] > 0
        assert figures['step_seconds'] == pytest.approx(
            figures['decode_seconds'] - figures['encode_seconds'] - figures['prefill_seconds'])
    assert len(speculative['acceptance_per_depth']) == 2 and speculative['tokens_per_trunk_forward'] >= 1
    comparison = report['speculative_vs_greedy']
    assert comparison['identical_to_greedy'] and comparison['mismatched_utterances'] == 0
    assert comparison['speedup'] > 0
    assert [h['subset'] for h in report['hypotheses']] == list(SUBSETS)
    assert all(h['greedy'] == h['speculative'] for h in report['hypotheses'])


def _run_cli(*args):
    return subprocess.run([*preimported_python(), '-m', 'megatron_salm_mtp.evaluate', *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_missing_files_are_named(tmp_path, manifest):
    result = _run_cli('--load', str(tmp_path), '--manifest', str(tmp_path / 'nope.jsonl'))
    assert result.returncode == 2 and f'--manifest {tmp_path / "nope.jsonl"}: no such file' in result.stderr
    result = _run_cli('--load', str(tmp_path / 'none'), '--manifest', manifest)
    assert result.returncode == 2 and f'--load {tmp_path / "none"}: no such directory' in result.stderr
    result = _run_cli('--load', str(tmp_path), '--manifest', manifest, '--mtp-draft-depth', '2')
    assert result.returncode == 2 and '--mtp-draft-depth needs --speculative' in result.stderr


def _depth(cfg, *flags):
    parser = evaluate.build_parser()
    args = parser.parse_args(['--load', 'ck', '--manifest', 'm', '--speculative', *flags])
    return evaluate.draft_depth(parser, args, cfg)


def test_draft_depth_checks_the_checkpoint(capsys):
    assert _depth(tiny_config(mtp_num_layers=2)) == 2
    assert _depth(tiny_config(mtp_num_layers=2), '--mtp-draft-depth', '1') == 1
    assert _depth(tiny_config(mtp_num_layers=1, mtp_use_repeated_layer=True), '--mtp-draft-depth', '4') == 4
    for cfg, flags, message in [
            (tiny_config(mtp_num_layers=None), [], '--speculative: the checkpoint in --load ck has no MTP heads'),
            (tiny_config(mtp_num_layers=2), ['--mtp-draft-depth', '3'],
             '--mtp-draft-depth 3 exceeds the 2 MTP depths trained in --load ck'),
            (tiny_config(mtp_num_layers=2), ['--mtp-draft-depth', '0'], '--mtp-draft-depth 0: must be >= 1')]:
        with pytest.raises(SystemExit):
            _depth(cfg, *flags)
        assert message in capsys.readouterr().err


def test_no_checkpoint_in_load_folder(single_rank_parallel, tmp_path, manifest):
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        evaluate.main(['--load', str(tmp_path), '--manifest', manifest])


def test_acceptance_plot(tmp_path):
    pytest.importorskip('matplotlib')
    from megatron_salm_mtp.inference.report import plot_acceptance
    figures = {'acceptance_per_depth': [0.9, 0.8, None],
               'subsets': {'digits': {'acceptance_per_depth': [0.7, 0.5, 0.4]}}}
    report = {'modes': {'greedy': {'subsets': {}}, 'speculative': figures}}
    path = plot_acceptance(report, str(tmp_path / 'acceptance.png'))
    assert path and os.path.getsize(path) > 0


def _same_scores(figures: dict, pairs) -> None:
    """``figures`` are the scores of these (reference, hypothesis) pairs, and S + D + I adds up."""
    scores = Scores()
    for reference, hypothesis in pairs:
        scores.add(reference, hypothesis)
    assert {k: figures[k] for k in scores.figures()} == scores.figures()
    assert figures['word_errors'] == figures['substitutions'] + figures['deletions'] + figures['insertions']


def test_splits_audio_ablation_and_predictions(single_rank_parallel, tp2_checkpoint, manifest, unseen_manifest,
                                               tmp_path, capsys):
    out_folder, predictions = tmp_path / 'reports', tmp_path / 'pred' / 'test_pred.jsonl'
    out_folder.mkdir()
    evaluate.main(['--load', tp2_checkpoint, '--manifest', f'{manifest},{unseen_manifest}', '--audio-ablation',
                   '--batch-size', '2', '--max-new-tokens', '5', '--warmup-batches', '0', '--group-by', 'accent',
                   '--out', str(out_folder), '--out-manifest', str(predictions)])
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])['report'] == str(out_folder / 'report.json')
    assert 'greedy: 6/6 utterances (100%)' in captured.err and 'greedy_silence: 6/6 utterances' in captured.err
    with open(out_folder / 'report.json') as f:
        report = json.load(f)
    assert report['utterances'] == 6 and report['skipped_utterances'] == 1
    assert report['skipped_by_reason'] == {'missing_file': 1}
    assert report['skipped'] == [f'{os.path.dirname(unseen_manifest)}/1.wav ({unseen_manifest}:2): missing_file']
    assert {k: (v['utterances'], v['skipped_utterances']) for k, v in report['splits'].items()} == \
        {'test': (4, 0), 'test_unseen': (2, 1)}
    assert set(report['modes']) == {'greedy', 'greedy_silence'}
    hyps = report['hypotheses']
    assert [(h['split'], h['subset']) for h in hyps] == [('test', s) for s in SUBSETS] + \
        [('test_unseen', 'natural')] * 2
    for mode, figures in report['modes'].items():  # every figure is the scores of its hypotheses
        _same_scores(figures, [(h['reference'], h[mode]) for h in hyps])
        assert figures['utterances'] == 6
        for split, split_figures in figures['splits'].items():
            _same_scores(split_figures, [(h['reference'], h[mode]) for h in hyps if h['split'] == split])
            for subset, subset_figures in split_figures['subsets'].items():
                _same_scores(subset_figures, [(h['reference'], h[mode]) for h in hyps
                                              if (h['split'], h['subset']) == (split, subset)])
        for group, group_figures in figures['groups'].items():  # --group-by accent: by the manifest field
            _same_scores(group_figures, [(h['reference'], h[mode]) for h in hyps if h['group'] == group])
        for split, split_figures in figures['splits'].items():
            for group, group_figures in split_figures['groups'].items():
                _same_scores(group_figures, [(h['reference'], h[mode]) for h in hyps
                                             if (h['split'], h['group']) == (split, group)])
        assert {k: v['utterances'] for k, v in figures['groups'].items()} == {'north': 2, 'south': 2, 'none': 2}
        assert set(figures['splits']['test']['groups']) == {'north', 'south'}
        assert set(figures['splits']['test']['subsets']) == {'natural', 'digits', 'names'}
        assert figures['splits']['test_unseen']['subsets']['natural']['utterances'] == 2
        assert figures['subsets']['natural']['utterances'] == 4 and figures['generated_tokens'] == 6 * 5
    # the ablation table sets the two greedy runs over the same utterances side by side
    table, greedy, silence = report['audio_ablation'], report['modes']['greedy'], report['modes']['greedy_silence']
    assert (table['wer'], table['wer_silence'], table['cer_silence']) == (greedy['wer'], silence['wer'], silence['cer'])
    assert table['unchanged_outputs'] == sum(h['greedy'] == h['greedy_silence'] for h in hyps)
    for split in ('test', 'test_unseen'):
        row = table['splits'][split]
        assert (row['utterances'], row['wer'], row['wer_silence']) == (
            greedy['splits'][split]['utterances'], greedy['splits'][split]['wer'], silence['splits'][split]['wer'])
        assert set(row['subsets']) == set(greedy['splits'][split]['subsets'])
    assert table['subsets']['natural']['wer_silence'] == silence['subsets']['natural']['wer']
    assert table['groups']['north']['wer_silence'] == silence['groups']['north']['wer']
    assert table['splits']['test']['groups']['south']['wer'] == greedy['splits']['test']['groups']['south']['wer']
    assert [h['group'] for h in hyps] == list(ACCENTS) + ['none'] * 2
    # NeMo-style predictions: each decoded input line as it was, plus pred_text (greedy)
    with open(predictions) as f:
        lines = [json.loads(line) for line in f]
    assert [row['pred_text'] for row in lines] == [h['greedy'] for h in hyps]
    assert lines[4] == {'audio_filepath': '0.wav', 'text': 'Call 0 5, colour!', 'subset': 'natural', 'id': 0,
                        'pred_text': hyps[4]['greedy']}
    assert lines[5]['id'] == 2 and report['out_manifest'] == str(predictions)


@pytest.mark.parametrize('flags, message', [
    (['--max-utterances', '0'], '--max-utterances 0: must be >= 1'),
    (['--batch-size', '0'], '--batch-size 0: must be >= 1'),
    (['--out', '{tmp}/file.txt/report.json'], '--out {tmp}/file.txt/report.json: cannot create its folder'),
    (['--out-manifest', '{tmp}'], '--out-manifest {tmp}: is a folder'),
    (['--out', '{tmp}/r.json', '--out-manifest', '{tmp}/r.json'], 'the same file as --out'),
    (['--ctc-joint-weight', '0.3', '1.5'], '--ctc-joint-weight 1.5: must be in (0, 1]'),
    (['--ctc-joint-weight', '0'], '--ctc-joint-weight 0.0: must be in (0, 1]'),
    (['--ctc-joint-weight', '0.3', '--ctc-beam-size', '4', '0'], '--ctc-beam-size 0: must be >= 1'),
    (['--ctc-beam-size', '4'], '--ctc-beam-size steers a beam search by the CTC head: give --ctc-joint-weight too'),
    (['--ctc-joint-weight', '0.3', '--lexicon', '{tmp}/file.txt'], '--lexicon and --lexicon-penalty go together'),
    (['--ctc-joint-weight', '0.3', '--lexicon-penalty', '2'], '--lexicon and --lexicon-penalty go together'),
    (['--lexicon', '{tmp}/file.txt', '--lexicon-penalty', '2'], '--lexicon steers the CTC-steered decoders'),
    (['--ctc-joint-weight', '0.3', '--lexicon', '{tmp}/file.txt', '--lexicon-penalty', '2', '0'],
     '--lexicon-penalty 0.0: must be > 0'),
    (['--ctc-joint-weight', '0.3', '--lexicon', '{tmp}/gone.jsonl', '--lexicon-penalty', '2'],
     '--lexicon {tmp}/gone.jsonl: no such file'),
    pytest.param(['--cuda-graphs'], '--cuda-graphs needs a GPU',
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU takes the flag')),
])
def test_bad_flags_fail_before_loading(tmp_path, manifest, capsys, flags, message):
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(SystemExit):  # --load holds no checkpoint: the error must come first
        evaluate.main(['--load', str(tmp_path), '--manifest', manifest, *[f.format(tmp=tmp_path) for f in flags]])
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_two_manifests_with_one_split_name(tmp_path, manifest, capsys):
    other = write_manifest(tmp_path / 'test.jsonl', [])
    with pytest.raises(SystemExit):
        evaluate.main(['--load', str(tmp_path), '--manifest', f'{manifest},{other}'])
    assert f"--manifest: {manifest} and {other} would both be split 'test'" in capsys.readouterr().err


def test_a_split_without_usable_audio_is_named(single_rank_parallel, tp2_checkpoint, tmp_path, capsys):
    bad = write_manifest(tmp_path / 'gone.jsonl', [{'audio_filepath': 'nope.wav', 'text': 'x'}])
    with pytest.raises(SystemExit):
        evaluate.main(['--load', tp2_checkpoint, '--manifest', bad])
    assert f'--manifest {bad}: no usable utterance among 1 lines (1 skipped: missing_file)' in capsys.readouterr().err


def test_data_settings_contradicting_the_model_are_one_line(single_rank_parallel, tp2_checkpoint, manifest,
                                                            tmp_path, capsys):
    """A config.yaml whose n_mels is not the model's num_mel_bins: one line before the model is built."""
    load = str(tmp_path / 'ckpt')
    shutil.copytree(tp2_checkpoint, load)
    iteration, folder = latest_checkpoint(load)
    path = os.path.join(folder, 'config.yaml')
    with open(path) as f:
        stored = yaml.safe_load(f)
    stored['n_mels'] = 208 - stored['num_mel_bins']  # the other of 80 and 128
    with open(path, 'w') as f:
        yaml.safe_dump(stored, f)
    with pytest.raises(SystemExit):
        evaluate.main(['--load', load, '--manifest', manifest])
    assert (f"--load {load} (iteration {iteration}): config.yaml records n_mels {stored['n_mels']} for the data "
            f"but num_mel_bins {stored['num_mel_bins']} for the model") in capsys.readouterr().err


def test_missing_scoring_packages_are_named_first(tmp_path, manifest, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, 'scoring_available', lambda: False)
    with pytest.raises(SystemExit):
        evaluate.main(['--load', str(tmp_path), '--manifest', manifest])
    assert "pip install 'megatron_salm_mtp[eval]'" in capsys.readouterr().err


@pytest.mark.parametrize('flags', [['--ctc-greedy'], ['--ctc-joint-weight', '0.3']])
def test_a_ctc_mode_without_a_ctc_head_is_one_line(single_rank_parallel, tp2_checkpoint, manifest, capsys, flags):
    with pytest.raises(SystemExit):
        evaluate.main(['--load', tp2_checkpoint, '--manifest', manifest, *flags])
    assert (f'{flags[0]}: the checkpoint in --load {tp2_checkpoint} has no CTC head '
            '(trained without --ctc-loss-weight)') in capsys.readouterr().err
