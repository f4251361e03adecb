"""What a newcomer reads first: --help grouped by concern, bench's own help, no optional-package
notices before them, a training log that starts with the run (not DDP's bucket listing), and
Megatron-LM's --tensorboard-dir, --wandb-project and --logging-level."""

import os
import subprocess

import pytest

from megatron_salm_mtp.cli import parse_args
from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.train import parse_and_validate
from tests.support.process import ROOT, preimported_python
from tests.support.train_utils import run_train

GROUPS = ['LLM (GPTModel):', 'Multi-token prediction:', 'Mixture of experts (the MTP layers of --mtp-layer-pattern E):',
          'Audio encoder (Whisper-shaped) and projector:', 'CTC on the audio encoder (model/ctc.py):',
          'Parallelism:', 'Precision:', 'Kernels and memory:', 'Training: schedule and optimizer:',
          'Logging and validation:', 'Checkpoints and stopping:', 'Data:', 'SpecAugment (training data only):']


def _help(module: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}  # notices on, as a user has them
    return subprocess.run([*preimported_python(), '-m', module, '--help'], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def _group_of(text: str, flag: str) -> str:
    title = None
    for line in text.splitlines():
        if line.endswith(':') and not line.startswith(' '):
            title = line
        elif line.lstrip().startswith(flag):
            return title
    raise AssertionError(f'{flag} not in --help')


def test_train_help_is_grouped_with_choices_and_off_switches():
    done = _help('megatron_salm_mtp.train')
    assert done.returncode == 0 and done.stderr == ''  # no Transformer Engine / Apex notices
    text = done.stdout
    assert text.startswith('usage: python -m megatron_salm_mtp.train [--config FILE.yaml] [--FLAG VALUE ...]\n')
    titles = [line for line in text.splitlines() if line in GROUPS]
    assert titles == GROUPS
    assert _group_of(text, '--save ') == 'Checkpoints and stopping:'
    assert _group_of(text, '--async-save') == 'Checkpoints and stopping:'
    assert _group_of(text, '--use-distributed-optimizer') == 'Parallelism:'
    assert _group_of(text, '--cross-entropy-fusion-impl') == 'Kernels and memory:'
    assert _group_of(text, '--tokenizer-model') == 'Data:'
    assert _group_of(text, '--tensorboard-dir') == 'Logging and validation:'
    for shown in ('--lr-decay-style {constant,linear,cosine,inverse-square-root}',
                  '--transformer-impl {transformer_engine,local}', '--prompt-template {plain,llama3,qwen}',
                  '--mtp-mask-placeholder-paths, --no-mtp-mask-placeholder-paths',
                  '--gradient-accumulation-fusion, --no-gradient-accumulation-fusion',
                  '--check-for-nan-in-loss-and-grad, --no-check-for-nan-in-loss-and-grad'):
        assert shown in text, shown
    assert '--no-bf16' not in text  # off by default: its --no- form only clutters
    assert 'DataLoader worker processes per rank' in text  # the data section's docstrings too


def test_off_switches_parse():
    run = parse_args(['--no-mtp-mask-placeholder-paths', '--no-check-for-nan-in-loss-and-grad', '--bf16'])
    assert run.model.mtp_mask_placeholder_paths is False and run.train.check_for_nan_in_loss_and_grad is False
    assert run.model.bf16 is True
    assert parse_args(['--bf16', '--no-bf16']).model.bf16 is False


def test_bench_help_shows_its_own_flags():
    done = _help('megatron_salm_mtp.tools.bench_train')
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout.startswith('usage: python -m megatron_salm_mtp.tools.bench_train [bench flags] [training flags]')
    assert '--warmup-iters' in done.stdout and '--list-host-syncs' in done.stdout
    assert '--num-layers' not in done.stdout and 'python -m megatron_salm_mtp.train --help' in done.stdout


@pytest.mark.parametrize('flags, message', [
    (['--wandb-project', 'p'], '--wandb-project p: the wandb package is not installed (pip install wandb)'),
    (['--wandb-exp-name', 'run1'], '--wandb-exp-name names a run of --wandb-project'),
    (['--logging-level', '-1'], '--logging-level must be >= 0, got -1'),
])
def test_logging_flags_are_checked(tmp_path, flags, message):
    manifest = tmp_path / 'train.jsonl'
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}\n')
    if flags[0] == '--wandb-project' and _wandb_installed():
        pytest.skip('wandb is installed here')
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        parse_and_validate(['--train-manifest', str(manifest)] + flags)


def _wandb_installed() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def test_training_log_and_tensorboard(train_corpus, tmp_path):
    """One step: the log holds no DDP bucket listing, --logging-level 30 keeps the INFO lines out
    (the iteration line is printed, not logged), and --tensorboard-dir gets the step's scalars."""
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    quiet = run_train(train_corpus, ['--train-iters', '1', '--log-interval', '1', '--lr-warmup-iters', '0',
                                     '--logging-level', '30', '--tensorboard-dir', str(tmp_path / 'tb'),
                                     '--log-dir', str(tmp_path / 'logs')])
    assert 'Params for bucket' not in quiet.stdout + quiet.stderr
    assert ' INFO ' not in quiet.stdout and 'iteration        1/       1' in quiet.stdout
    events = event_accumulator.EventAccumulator(str(tmp_path / 'tb'))
    events.Reload()
    assert {'train/lm loss', 'train/mtp_1 loss'} <= set(events.Tags()['scalars'])
    assert [e.step for e in events.Scalars('train/lm loss')] == [1]
    chatty = run_train(train_corpus, ['--train-iters', '1', '--log-interval', '1', '--lr-warmup-iters', '0',
                                      '--logging-level', '20', '--log-dir', str(tmp_path / 'logs2')])
    assert ' INFO ' in chatty.stdout and 'Params for bucket' not in chatty.stdout + chatty.stderr
    # TensorBoard only when asked for
    assert [n for n in os.listdir(tmp_path / 'logs2') if n.startswith('events.')] == []
