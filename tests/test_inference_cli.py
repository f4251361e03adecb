"""``python -m megatron_salm_mtp.evaluate`` end to end: a checkpoint saved at TP=2 by two gloo
processes, decoded at TP=1 greedily and speculatively into one report; bad input named."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from data_fixtures import tone, write_manifest
from megatron_salm_mtp import evaluate
from megatron_salm_mtp.data.audio import write_wav
from parallel_utils import tiny_config
from train_utils import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
SUBSETS = ('natural', 'digits', 'natural', 'names')


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp('eval_corpus')
    rows = []
    for i, subset in enumerate(SUBSETS):
        write_wav(str(folder / f'{i}.wav'), tone(0.8 + 0.3 * i, freq=300 + 50 * i, seed=i), 16000)
        rows.append({'audio_filepath': f'{i}.wav', 'text': f'say {i} now', 'subset': subset})
    return write_manifest(folder / 'test.jsonl', rows)


@pytest.fixture(scope='module')
def tp2_checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('tp2') / 'ckpt')
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2',
           f'--master-port={free_port()}', os.path.join(HERE, 'inference_ckpt.py'), '--out', out,
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
    assert greedy['tokens_per_trunk_forward'] == 1.0
    assert len(speculative['acceptance_per_depth']) == 2 and speculative['tokens_per_trunk_forward'] >= 1
    comparison = report['speculative_vs_greedy']
    assert comparison['identical_to_greedy'] and comparison['mismatched_utterances'] == 0
    assert comparison['speedup'] > 0
    assert [h['subset'] for h in report['hypotheses']] == list(SUBSETS)
    assert all(h['greedy'] == h['speculative'] for h in report['hypotheses'])


def _run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'megatron_salm_mtp.evaluate', *args],
                          capture_output=True, text=True, timeout=120, cwd=os.path.dirname(HERE))


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
