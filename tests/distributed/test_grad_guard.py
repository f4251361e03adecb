"""--check-for-nan-in-loss-and-grad: a non-finite gradient never reaches the weights or a checkpoint.

An inf written into one rank's gradient buffer after the backward pass (tests/support/grad_fault_probe.py)
stands for a fault the loss does not show; ``--lr 1e3`` gives a finite loss with a NaN gradient
norm at its third step. Every checkpoint written is read back tensor by tensor (model, optimizer
state) through torch.distributed.checkpoint, without the model.
"""

import glob
import json
import os
import re
import subprocess

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.support.data_fixtures import make_train_valid_corpus
from tests.support.process import ROOT, child_env, rank_launcher, support_script
from tests.support.train_utils import TINY_FLAGS, read_metrics, run_train

PROBE = support_script('grad_fault_probe.py')
# configs/tiny_cpu.yaml's own model and batch (run_train's TINY_FLAGS shrink them): at --lr 1e3
# its third step has a finite loss and a NaN gradient norm.
TINY_CPU_MODEL = ['--num-layers', '4', '--hidden-size', '128', '--ffn-hidden-size', '352',
                  '--encoder-num-layers', '2', '--encoder-hidden-size', '128',
                  '--micro-batch-size', '8', '--global-batch-size', '16']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return make_train_valid_corpus(tmp_path_factory.mktemp('guard') / 'corpus', n=24)


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def saved_iterations_and_non_finite(save_dir, scratch) -> dict:
    """{iteration: names of floating-point tensors holding NaN or inf} over every checkpoint."""
    found = {}
    for folder in sorted(glob.glob(os.path.join(save_dir, 'iter_*'))):
        flat = os.path.join(scratch, 'flat.pt')
        dcp_to_torch_save(folder, flat)
        state = torch.load(flat, weights_only=False)
        assert len(state) > 50, folder  # the model and the optimizer state, not an empty shell
        found[int(folder.rsplit('_', 1)[1])] = sorted(
            name for name, value in state.items() if any(
                t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(value)))
    return found


def run_probe(corpus, extra, nproc: int):
    launcher, rank_env = rank_launcher(nproc)
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    cmd = launcher + [PROBE, '--config', os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'),
           '--train-manifest', os.path.join(corpus, 'train.jsonl')] + TINY_FLAGS + list(extra)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads(m) for m in re.findall(r'PROBE (\{[^{}]*\})', result.stdout)]  # ranks interleave
    assert len(reports) == nproc, result.stdout[-3000:]
    return sorted(reports, key=lambda r: r['rank']), result.stdout + result.stderr


def test_injected_inf_gradient_is_skipped_and_never_saved(corpus, tmp_path):
    save = str(tmp_path / 'ckpt')
    reports, log = run_probe(corpus, ['--fault-iterations', '2', '--train-iters', '4', '--log-interval', '1',
                                      '--save', save, '--save-interval', '1', '--log-dir', save], nproc=1)
    assert reports[0]['finite'] and reports[0]['skipped'] == 1 and reports[0]['stopped'] is None, reports
    assert 'iteration 2: non-finite gradient, update skipped (1 in a row)' in log
    # Iteration 2's save waits for the next step that updates; the run goes on to the end.
    assert saved_iterations_and_non_finite(save, tmp_path) == {1: [], 3: [], 4: []}
    records = read_metrics(save)
    assert [r['skipped_iterations'] for r in records] == [0, 1, 1, 1]
    assert records[-1]['lm loss'] < records[0]['lm loss']


def test_learning_rate_blow_up_never_reaches_a_checkpoint(corpus, tmp_path):
    save = str(tmp_path / 'ckpt')
    # one utterance per row: the corpus's 24 pack into fewer rows than a global batch of 16
    result = run_train(corpus, TINY_CPU_MODEL + ['--no-pack-sequences', '--lr', '1e3', '--lr-warmup-iters', '1',
                                                 '--train-iters', '4',
                                                 '--log-interval', '1', '--save', save, '--save-interval', '1'])
    saved = saved_iterations_and_non_finite(save, tmp_path)
    assert saved == {1: [], 2: [], 4: []}, saved  # 4: the end-of-run save, holding step 2's weights
    assert 'iteration 3: non-finite gradient, update skipped' in result.stdout + result.stderr
    assert read_metrics(save)[-1]['skipped_iterations'] == 2


# MoE MTP layers with EP=2 and the distributed optimizer: core's ChainedOptimizer over a dense and
# an expert optimizer, each with its own gradient-statistics group.
MOE_EP2 = ['--mtp-layer-pattern', 'E', '--num-experts', '4', '--moe-router-topk', '2',
           '--expert-model-parallel-size', '2', '--moe-token-dispatcher-type', 'alltoall',
           '--use-distributed-optimizer']


@pytest.mark.parametrize('layout', [[], MOE_EP2], ids=['dp2', 'moe_ep2_distributed_optimizer'])
def test_one_rank_with_an_inf_gradient_skips_the_step_on_every_rank(corpus, tmp_path, layout):
    """The inf on rank 1 only (after the gradient all-reduce): both ranks skip. At DP=2 the
    replicas stay identical; with EP=2 they hold different experts."""
    reports, log = run_probe(corpus, layout + ['--fault-iterations', '2', '--fault-rank', '1', '--train-iters', '3',
                                               '--log-dir', str(tmp_path)], nproc=2)
    assert [(r['finite'], r['skipped']) for r in reports] == [(True, 1), (True, 1)], reports
    assert layout or reports[0]['checksum'] == reports[1]['checksum']
    assert 'iteration 2: non-finite gradient, update skipped' in log


def test_guarded_step_matches_core_step(corpus, tmp_path):
    """Without faults the split step (norm first, then clip and update) is core's step, bitwise."""
    losses = {}
    for name, flag in (('guarded', []), ('core', ['--no-check-for-nan-in-loss-and-grad'])):
        log_dir = str(tmp_path / name)
        # one utterance per row (--no-pack-sequences): the opt-out of packing trains end to end too
        run_train(corpus, flag + ['--train-iters', '2', '--lr-warmup-iters', '1', '--log-interval', '1',
                                  '--clip-grad', '0.5', '--log-dir', log_dir, '--no-pack-sequences'])
        losses[name] = [(r['lm loss'], r['grad_norm']) for r in read_metrics(log_dir)]
    # Step 1's norm (about 3.6) is clipped to 0.5; step 2's loss and norm show its update.
    assert len(losses['guarded']) == 2 and losses['guarded'] == losses['core']
