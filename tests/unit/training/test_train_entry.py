"""The training entry point end to end: flags and YAML, a falling loss, multi-rank, NaN handling."""

import os
import subprocess

import pytest
import yaml

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.config import ConfigError
from tests.support.process import CONFIGS, ROOT, child_env, free_port, preimported_python, support_script
from tests.support.train_utils import read_metrics, run_train


@pytest.fixture
def corpus(train_corpus):
    return train_corpus


def test_precedence_defaults_yaml_flags(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text(yaml.safe_dump({'lr': 0.1, 'hidden-size': 96, 'mtp_num_layers': 3}))
    run = parse_args(['--config', str(config), '--lr', '0.2', '--train-manifest', 'x.jsonl'])
    assert run.train.lr == 0.2  # flag beats YAML
    assert run.model.hidden_size == 96 and run.model.mtp_num_layers == 3  # YAML beats default
    assert run.model.num_layers == 2 and run.train.min_lr == 3e-5  # defaults
    assert run.data.seq_length == run.model.seq_length  # one flag, both sections
    assert run.data.n_mels == run.model.num_mel_bins
    resolved = run.resolved()
    assert resolved['lr'] == 0.2 and resolved['hidden_size'] == 96


def test_unknown_yaml_key_and_bad_value_are_errors(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('hidden_sise: 64\n')
    with pytest.raises(ConfigError, match="c.yaml: unknown key 'hidden_sise'"):
        parse_args(['--config', str(config)])
    config.write_text('num_layers: many\n')
    with pytest.raises(ConfigError, match='num_layers must be int'):
        parse_args(['--config', str(config)])
    with pytest.raises(ConfigError, match='no such file'):
        parse_args(['--config', str(tmp_path / 'missing.yaml')])


def test_warmup_longer_than_training_is_an_error():
    run = parse_args(['--train-iters', '10', '--lr-warmup-iters', '10', '--train-manifest', 'x'])
    with pytest.raises(ConfigError, match='--lr-warmup-iters 10 must be below'):
        run.train.validate()


def test_unknown_flag_is_an_error():
    result = subprocess.run([*preimported_python(), '-m', 'megatron_salm_mtp.train', '--hiden-size', '3'],
                            capture_output=True, text=True)
    assert result.returncode == 2 and 'unrecognized arguments: --hiden-size' in result.stderr


def test_shipped_configs_parse():
    root = ROOT
    for name in sorted(os.listdir(os.path.join(root, 'configs'))):
        run = parse_args(['--config', os.path.join(root, 'configs', name), '--train-manifest', 'x'])
        run.model.validate()


def test_loss_falls_and_metrics_are_written(corpus, tmp_path):
    log_dir = str(tmp_path / 'logs')
    result = run_train(corpus, ['--train-iters', '30', '--log-dir', log_dir, '--eval-interval', '15',
                                '--eval-iters', '1'])
    assert 'transformer implementation: local' in result.stdout
    assert 'gradient accumulation fusion: off (the local spec)' in result.stdout
    assert 'iteration       30/      30' in result.stdout and 'mtp_2 loss' in result.stdout
    records = read_metrics(log_dir)
    assert [r['iteration'] for r in records] == list(range(2, 31, 2))
    first, last = records[0], records[-1]
    assert last['lm loss'] < 0.7 * first['lm loss'], (first['lm loss'], last['lm loss'])
    assert last['mtp_1 loss'] < first['mtp_1 loss']
    for key in ('consumed_samples', 'lr', 'grad_norm', 'tokens_per_s', 'tflops_per_gpu',
                'peak_mem_gb', 'mtp_1 acc', 'mtp_2 acc'):
        assert key in last
    assert last['consumed_samples'] == 30 * 8
    assert len(read_metrics(log_dir, 'valid')) == 2
    with open(os.path.join(log_dir, 'config.yaml')) as f:
        written = yaml.safe_load(f)
    assert written['train_iters'] == 30 and written['pack_sequences']  # the default: packed rows


def test_two_ranks_pipeline_parallel_stop_at_time_limit(corpus, tmp_path):
    """PP=2 trains; --exit-duration-in-mins (here a time limit every step exceeds) saves and
    stops both ranks after the first step."""
    log_dir, ckpt = str(tmp_path / 'logs'), tmp_path / 'ckpt'
    result = run_train(corpus, ['--train-iters', '50', '--pipeline-model-parallel-size', '2', '--log-interval', '1',
                                '--exit-duration-in-mins', '1e-9', '--save', str(ckpt), '--log-dir', log_dir], nproc=2)
    records = read_metrics(log_dir)
    assert [r['iteration'] for r in records] == [1] and 'mtp_1 loss' in records[0]
    assert 'stopping at iteration 1 (--exit-duration-in-mins)' in result.stdout + result.stderr
    assert (ckpt / 'latest_checkpointed_iteration.txt').read_text().strip() == '1'
    with pytest.raises(ConfigError, match='--exit-duration-in-mins 0.0 must be positive'):
        parse_args(['--exit-duration-in-mins', '0', '--train-manifest', 'x']).train.validate()


def test_non_finite_loss_skips_updates_then_stops(corpus, tmp_path):
    """A NaN weight makes every loss NaN: each update is skipped (weights untouched), and after
    --max-consecutive-nan-skips steps the run stops with a message naming the flag."""
    result = subprocess.run(
        [*preimported_python(), support_script('nan_probe.py'), '--config', os.path.join(CONFIGS, 'tiny_cpu.yaml'),
         '--train-manifest', os.path.join(corpus, 'train.jsonl'), '--num-layers', '2',
         '--hidden-size', '64', '--ffn-hidden-size', '176', '--encoder-num-layers', '1',
         '--encoder-hidden-size', '64', '--micro-batch-size', '4', '--global-batch-size', '8',
         '--max-consecutive-nan-skips', '3', '--train-iters', '10', '--lr-warmup-iters', '2',
         '--eval-interval', '0',
         '--log-interval', '1', '--log-dir', str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        # its own port: the in-process single_rank_parallel fixture already listens on MASTER_PORT
        env=child_env(PYTHONWARNINGS='ignore', MASTER_PORT=str(free_port())))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'STOPPED: 3 consecutive iterations with a non-finite loss' in result.stdout
    assert 'UNCHANGED' in result.stdout


def test_nemo_mtp_block_maps_onto_megatron_names(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('mtp:\n  enabled: true\n  num_nextn_predict_layers: 3\n  loss_scaling_factor: 0.2\n'
                      '  use_repeated_layer: true\n  hybrid_override_pattern: "*"\n')
    model = parse_args(['--config', str(config)]).model
    assert (model.mtp_num_layers, model.mtp_loss_scaling_factor, model.mtp_use_repeated_layer,
            model.mtp_layer_pattern) == (3, 0.2, True, '*')
    config.write_text('mtp:\n  enabled: false\n')
    assert parse_args(['--config', str(config)]).model.mtp_num_layers is None
    assert parse_args(['--config', str(config), '--mtp-num-layers', '2']).model.mtp_num_layers == 2


@pytest.mark.parametrize('text,message', [
    ('mtp_num_layers: 2\nmtp:\n  num_nextn_predict_layers: 3\n',
     'mtp.num_nextn_predict_layers=3 contradicts mtp_num_layers=2'),
    ('mtp_num_layers: 2\nmtp:\n  enabled: false\n', 'mtp.enabled=false contradicts mtp_num_layers=2'),
    ('mtp:\n  enabled: false\n  num_nextn_predict_layers: 2\n', 'mtp.enabled is false but'),
    ('mtp:\n  depth: 2\n', "unknown key\\(s\\) in mtp: \\['depth'\\]"),
])
def test_nemo_mtp_block_contradictions(tmp_path, text, message):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_args(['--config', str(config)])


def test_nemo_mtp_block_drives_a_run(corpus, tmp_path):
    config = tmp_path / 'nemo.yaml'
    config.write_text('mtp:\n  enabled: true\n  num_nextn_predict_layers: 2\n  use_repeated_layer: true\n')
    log_dir = str(tmp_path / 'logs')
    run_train(corpus, ['--train-iters', '4', '--log-dir', log_dir, '--config', str(config)])
    last = read_metrics(log_dir)[-1]
    assert 'mtp_2 loss' in last and 'mtp_3 loss' not in last


@pytest.mark.parametrize('flags,message', [
    (['--fp8-format', 'e5m2', '--bf16'], "--fp8-format 'e5m2': choose none, e4m3, hybrid"),
    (['--fp8-format', 'hybrid'], '--fp8-format needs --bf16'),
    (['--head-chunk-rows', '-1'], '--head-chunk-rows -1'),
    (['--mtp-recompute'], '--mtp-recompute needs --mtp-num-layers'),
    (['--cross-entropy-fusion-impl', 'fused'], "--cross-entropy-fusion-impl 'fused': choose native, te, linear"),
    (['--cross-entropy-fusion-impl', 'linear', '--no-cross-entropy-loss-fusion'],
     '--cross-entropy-fusion-impl linear needs --cross-entropy-loss-fusion'),
    (['--cross-entropy-fusion-impl', 'linear', '--head-chunk-rows', '64'],
     '--head-chunk-rows 64 chunks the unfused head'),
])
def test_precision_and_memory_flags_are_validated(flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(flags).model.validate(1)


def test_fp8_without_transformer_engine_is_an_error():
    from megatron_salm_mtp.model.provider import provide_salm
    model = parse_args(['--fp8-format', 'hybrid', '--bf16']).model
    with pytest.raises(ConfigError, match='FP8 needs the Transformer Engine spec'):
        provide_salm(model, 'local')


def test_grad_norm_is_logged_as_a_float_whatever_the_optimizer_returns():
    import torch

    from megatron_salm_mtp.training.loop import grad_norm_value
    values = [grad_norm_value(norm) for norm in (None, 1.5, torch.tensor(2.25))]
    assert values == [0.0, 1.5, 2.25] and all(type(v) is float for v in values)
    assert f'{values[2]:.3f}' == '2.250'  # the log line's format; a tensor raises TypeError here
