"""The adapter that runs the SALM under Megatron-LM's pretrain() (megatron_salm_mtp/megatron_lm).

On CPU with megatron-core 0.19.2: Megatron-LM's parser and validation turn the flags into the
SALM's config, the model provider builds each stage's pieces, the dataset provider's iterators
carry each global batch's counts, one global batch through Megatron-Core's schedule with the
adapter's forward step gives the plugin's own step's losses and gradients, and the entry point
runs Megatron-LM's pretrain() (gloo, with the stand-ins of tests/support/megatron_lm_cpu.py): train,
validate, save, stop, resume. The GPU run is tests/gpu/pretrain_019.sh. On 0.16.1 (no
megatron.training) the entry must say so.
"""

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from tests.gpu.megatron_log import check_run
from tests.support.process import ROOT, child_env, free_port, preimported_python, support_script

HAS_MEGATRON_TRAINING = importlib.util.find_spec('megatron.training') is not None
needs_megatron_training = pytest.mark.skipif(
    not HAS_MEGATRON_TRAINING,
    reason='megatron.training is absent: megatron-core 0.16.1 ships megatron/core only, and the '
           'adapter needs 0.19.x (its refusal is tested instead)')

TINY_FLAGS = (
    '--num-layers 2 --hidden-size 32 --ffn-hidden-size 48 --num-attention-heads 4 '
    '--group-query-attention --num-query-groups 2 --qk-layernorm --seq-length 96 '
    '--max-position-embeddings 96 --position-embedding-type rope --normalization RMSNorm --swiglu '
    '--disable-bias-linear --hidden-dropout 0 --attention-dropout 0 --micro-batch-size 2 '
    '--global-batch-size 4 --train-iters 4 --lr 1e-3 --mtp-num-layers 2 --mtp-loss-scaling-factor 0.3 '
    '--transformer-impl local --make-vocab-size-divisible-by 16 --eval-iters 0 --eval-interval 2 '
    '--encoder-num-layers 3 --encoder-hidden-size 32 --encoder-num-attention-heads 4 '
    '--num-mel-bins 80 --train-manifest train.jsonl').split()


@pytest.mark.skipif(HAS_MEGATRON_TRAINING, reason='megatron.training is importable here: the adapter runs')
def test_entry_names_the_release_and_the_plugin_loop_without_megatron_training():
    done = subprocess.run([*preimported_python(), '-m', 'megatron_salm_mtp.megatron_lm.pretrain', '--help'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    from megatron.core.package_info import __version__
    assert done.returncode != 0
    assert f'megatron-core {__version__} does not ship it' in done.stderr
    assert 'python -m megatron_salm_mtp.train' in done.stderr


@needs_megatron_training
def test_installed_megatron_training_has_the_supported_pretrain():
    from megatron_salm_mtp.megatron_lm import require_megatron_training
    require_megatron_training()  # 0.19's pretrain(cfg_container, ...)


@pytest.fixture
def megatron_args():
    """Parse flags with Megatron-LM's parser; Megatron-LM's global state is cleared afterwards."""
    from megatron.training.global_vars import unset_global_variables

    from megatron_salm_mtp.megatron_lm.args import parse_megatron_args
    yield parse_megatron_args
    unset_global_variables()


@needs_megatron_training
def test_megatron_flags_become_the_salm_config(megatron_args):
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.training import get_train_valid_test_num_samples, num_floating_point_operations

    from megatron_salm_mtp.megatron_lm.providers import SALMProviders
    args = megatron_args(TINY_FLAGS)
    providers = SALMProviders.from_args(args)
    cfg, data = providers.cfg, providers.data
    # Megatron-LM overwrites its own --encoder-num-layers with --num-layers; the audio encoder's survives.
    assert (cfg.num_layers, cfg.encoder_num_layers, args.num_layers) == (2, 3, 2)
    assert (cfg.num_query_groups, cfg.kv_channels, cfg.qk_layernorm) == (2, 8, True)
    assert (cfg.mtp_num_layers, cfg.mtp_loss_scaling_factor, cfg.position_embedding_type) == (2, 0.3, 'rope')
    assert (cfg.vocab_size, cfg.audio_token_id) == (providers.tokenizer.vocab_size,
                                                     providers.tokenizer.audio_token_id)
    assert args.padded_vocab_size == cfg.padded_vocab_size and cfg.padded_vocab_size % 16 == 0
    assert (data.tokenizer_type, data.n_mels, data.seq_length, data.global_batch_size) == ('byte', 80, 96, 4)
    assert args.dataloader_type == 'external' and args.calculate_per_token_loss
    assert providers.datasets_provider.is_distributed is True
    # What pretrain() is handed, and what it computes from the args before and during training.
    pretrain_cfg_container_from_args(args)
    assert get_train_valid_test_num_samples()[0] == 16
    assert num_floating_point_operations(args, 4) > 0


@needs_megatron_training
def test_megatron_lms_own_reparse_accepts_the_command_line(monkeypatch):
    """pretrain() parses sys.argv again without the extra flags (ft_integration.setup) and only
    ignores unknown flags: values of Megatron-LM's own flags must be ones it knows."""
    from megatron.training.arguments import parse_args
    monkeypatch.setattr(sys, 'argv', ['pretrain.py'] + TINY_FLAGS)
    assert parse_args(ignore_unknown_args=True).num_layers == 2


@needs_megatron_training
@pytest.mark.parametrize('dropped, message', [
    ({'--swiglu': 0, '--disable-bias-linear': 0}, 'pass --swiglu --disable-bias-linear'),
    ({'--eval-interval': 1}, '--eval-interval is required')])
def test_megatron_flags_the_salm_cannot_honour_are_refused(megatron_args, dropped, message):
    """``dropped``: flag -> how many values follow it."""
    from megatron_salm_mtp.config import ConfigError
    flags = list(TINY_FLAGS)
    for flag, values in dropped.items():
        at = flags.index(flag)
        del flags[at:at + 1 + values]
    with pytest.raises(ConfigError, match=message):
        megatron_args(flags)


@needs_megatron_training
def test_ctc_is_refused_under_pretrain(megatron_args):
    """The CTC loss lives on the first stage; the adapter's loss reports cannot carry it yet (nor
    the encoder_ctc mode, whose step is the plugin loop's)."""
    from megatron_salm_mtp.config import ConfigError
    with pytest.raises(ConfigError, match='--ctc-loss-weight is not supported'):
        megatron_args(list(TINY_FLAGS) + ['--ctc-loss-weight', '0.3'])
    with pytest.raises(ConfigError, match='--training-mode encoder_ctc is not supported'):
        megatron_args(list(TINY_FLAGS) + ['--training-mode', 'encoder_ctc'])


@needs_megatron_training
def test_cuda_graphs_are_refused_under_pretrain(megatron_args):
    """Megatron-LM's graph helper cannot find the SALM's layers (the plugin loop graphs them)."""
    from megatron_salm_mtp.config import ConfigError
    with pytest.raises(ConfigError, match='--cuda-graph-impl local is not supported under'):
        megatron_args(list(TINY_FLAGS) + ['--cuda-graph-impl', 'local'])


@needs_megatron_training
def test_megatron_tokenizer_names_map_onto_the_plugins():
    from megatron_salm_mtp.config import ConfigError
    from megatron_salm_mtp.megatron_lm.args import tokenizer_type
    assert tokenizer_type(argparse.Namespace(tokenizer_type=None)) == 'byte'
    assert tokenizer_type(argparse.Namespace(tokenizer_type='HuggingFaceTokenizer')) == 'huggingface'
    assert tokenizer_type(argparse.Namespace(tokenizer_type='GPTSentencePieceTokenizer')) == 'sentencepiece'
    with pytest.raises(ConfigError, match='GPT2BPETokenizer'):
        tokenizer_type(argparse.Namespace(tokenizer_type='GPT2BPETokenizer'))


def _providers(cfg, training_mode='joint'):
    from megatron_salm_mtp.data.loader import DataConfig
    from megatron_salm_mtp.megatron_lm.providers import SALMProviders
    return SALMProviders(cfg, DataConfig(), tokenizer=None, train_manifest='unused',
                         valid_manifest=None, training_mode=training_mode)


@needs_megatron_training
def test_model_provider_builds_each_stages_pieces(single_rank_parallel):
    from tests.support.parallel_utils import tiny_config
    providers = _providers(tiny_config(), training_mode='head_only')
    first = providers.model_provider(pre_process=True, post_process=False)
    last = providers.model_provider(pre_process=False, post_process=True)
    assert hasattr(first, 'audio_encoder') and not first.language_model.post_process
    assert not hasattr(last, 'audio_encoder') and last.language_model.post_process and last.has_mtp_layers
    trainable = {name for name, p in last.named_parameters() if p.requires_grad}
    assert trainable and all('.mtp.' in name for name in trainable)


@needs_megatron_training
def test_speech_iterator_attaches_global_batch_counts_and_resumes(single_rank_parallel, tmp_path):
    from megatron_salm_mtp.data.loader import DataConfig
    from megatron_salm_mtp.megatron_lm.data import GLOBAL_BATCH_COUNTS, speech_iterator
    from megatron_salm_mtp.model.mtp import supervised_counts
    from tests.support.data_fixtures import make_corpus
    from tests.support.parallel_utils import tiny_config
    manifest = make_corpus(tmp_path, n=8)
    data = DataConfig(seq_length=96, micro_batch_size=2, global_batch_size=4, num_workers=0)
    tokenizer = data.make_tokenizer()
    cfg = tiny_config(num_mel_bins=80, vocab_size=tokenizer.vocab_size,
                      audio_token_id=tokenizer.audio_token_id, seq_length=96)
    run = speech_iterator(data, manifest, tokenizer, cfg, consumed_samples=0, shuffle=True)
    batches = [next(run) for _ in range(4)]
    assert [GLOBAL_BATCH_COUNTS in b for b in batches] == [True, False, True, False]
    expected = supervised_counts(batches[:2], 2, cfg.audio_token_id, True)
    assert torch.equal(batches[0][GLOBAL_BATCH_COUNTS], expected) and expected[0] > expected[2] > 0
    resumed = next(speech_iterator(data, manifest, tokenizer, cfg, consumed_samples=4, shuffle=True))
    assert torch.equal(resumed['tokens'], batches[2]['tokens'])


@needs_megatron_training
def test_forward_step_gives_the_plugins_losses_and_gradients(single_rank_parallel):
    """Two microbatches with different answer lengths, two MTP depths: the adapter's forward step
    in Megatron-Core's schedule (as pretrain() runs it) against the plugin's own step."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_salm_mtp.megatron_lm.data import MicrobatchesWithCounts
    from megatron_salm_mtp.parallel.setup import build_model, set_seed
    from megatron_salm_mtp.training.step import forward_backward, mtp_metrics
    from tests.support.parallel_utils import speech_batch, tiny_config
    cfg = tiny_config()
    set_seed(0)
    model = build_model(cfg)
    microbatches = [speech_batch(cfg, 2, seed=1, answer_lengths=[2, 3]),
                    speech_batch(cfg, 2, seed=2, answer_lengths=[12, 9])]

    plugin_loss = forward_backward(model, microbatches, cfg)
    plugin_mtp = mtp_metrics(model)
    plugin_grads = {n: p.main_grad.clone() for n, p in model[0].named_parameters() if p.requires_grad}

    model[0].zero_grad_buffer()
    model[0].config.finalize_model_grads_func = finalize_model_grads  # as Megatron-LM's train() sets
    reports = get_forward_backward_func()(
        forward_step_func=_providers(cfg).forward_step, model=model, num_microbatches=2,
        data_iterator=MicrobatchesWithCounts(iter(microbatches), lambda: 2, cfg),
        seq_length=cfg.seq_length, micro_batch_size=2, forward_only=False)

    totals = {key: sum(r[key] for r in reports) for key in reports[0]}
    assert float(totals['lm loss'][0] / totals['lm loss'][1]) == pytest.approx(plugin_loss.mean, rel=1e-6)
    for name in ('mtp_1 loss', 'mtp_2 loss', 'mtp_1 acc', 'mtp_2 acc'):
        assert float(totals[name][0] / totals[name][1]) == pytest.approx(plugin_mtp[name], rel=1e-5)
    for name, param in model[0].named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.main_grad, plugin_grads[name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m, name=name: f'{name}: {m}')


def _run_entry_on_cpu(flags, log_path):
    env = child_env(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), RANK='0',
               WORLD_SIZE='1', LOCAL_RANK='0', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    with open(log_path, 'w') as log:
        done = subprocess.run([*preimported_python(), support_script('megatron_lm_cpu.py')] + flags,
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    with open(log_path) as log:
        assert done.returncode == 0, log.read()[-3000:]


@needs_megatron_training
def test_pretrain_trains_validates_saves_and_resumes(tmp_path):
    from tests.support.data_fixtures import make_corpus
    train = make_corpus(tmp_path / 'train', n=8)
    valid = make_corpus(tmp_path / 'valid', n=4)
    ckpt = str(tmp_path / 'ckpt')
    flags = [f for f in TINY_FLAGS if f not in ('train.jsonl', '--train-manifest')] + [
        '--distributed-backend', 'gloo', '--num-workers', '0', '--train-manifest', train,
        '--valid-manifest', valid, '--eval-iters', '1', '--log-interval', '1']  # later flags win
    _run_entry_on_cpu(flags + ['--save', ckpt, '--save-interval', '2', '--exit-interval', '2'],
                      tmp_path / 'part1.log')
    assert open(os.path.join(ckpt, 'latest_checkpointed_iteration.txt')).read().strip() == '2'
    _run_entry_on_cpu(flags + ['--load', ckpt], tmp_path / 'part2.log')
    assert f'successfully loaded checkpoint from {ckpt}' in open(tmp_path / 'part2.log').read()
    assert check_run(str(tmp_path / 'part2.log'), iters=4, mtp_depths=2, first_iteration=3) == []
