"""Virtual pipeline stages (interleaved 1F1B) on the real Megatron-Core SALM, gloo, MTP on.

- PP=2 x VP=2 (4 decoder layers, one per chunk; chunk v of PP rank p holds layer 2v + p) has the
  gradients, loss and per-depth MTP statistics of the plain-torch reference, as every layout of
  test_parallel_gradients.py;
- a checkpoint saved at PP=2 x VP=2 (Megatron-LM's ``model0``, ``model1`` keys) loads at PP=1:
  same weights, and the next step gives the uninterrupted run's loss and weights;
- the flags' errors name the flags.
"""

import os
import re

import pytest
import torch

from megatron_salm_mtp.cli import build_parser, parse_args
from megatron_salm_mtp.config import ConfigError
from tests.support.checkpoints import assert_params, close_loss, full_params, last_stage, launch
from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)

INTERLEAVED = dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)


def test_pp2_vp2_gradients_match_reference(tmp_path):
    cfg = tiny_config(num_layers=4)
    workdir = str(tmp_path)
    weights = init_weights(cfg, workdir)
    batch = speech_batch(cfg, 8, seed=5)
    batch_path = os.path.join(workdir, 'batch.pt')
    torch.save(batch, batch_path)
    _, totals, expected = reference_grads(cfg, weights, batch)
    loss, grads, copies, ranks = run_layout(cfg.replace(**INTERLEAVED), os.path.join(workdir, 'weights.pt'),
                                            batch_path, os.path.join(workdir, 'vp'), nproc=2, microbatches=4)
    ce_sum, count = totals['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(expected, grads)
    assert set(copies) == {'language_model.embedding.word_embeddings.weight'}  # the MTP chunk's copy
    for name, copy in copies.items():
        torch.testing.assert_close(copy, grads[name], rtol=0, atol=0)
    stats = sum(r['mtp_stats'] for r in ranks if r['mtp_stats'] is not None)
    for k in range(cfg.mtp_depths):
        ce_k, n_k = totals[f'mtp_{k + 1}']
        assert stats[1, k].item() == n_k.item()
        assert stats[0, k].item() == pytest.approx(ce_k.item(), rel=1e-5)


def test_pp2_vp2_checkpoint_loads_at_pp1(tmp_path):
    work, ck = str(tmp_path), str(tmp_path / 'ck')
    cfg = tiny_config(num_layers=4)
    saved, _ = launch(work, 'vp', cfg.replace(**INTERLEAVED), [
        {'op': 'build'}, {'op': 'train', 'seeds': [1, 2]},
        {'op': 'save', 'dir': ck, 'iteration': 2}, {'op': 'dump', 'name': 'saved'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'}], nproc=2)
    loaded, _ = launch(work, 'pp1', cfg, [
        {'op': 'build'}, {'op': 'load', 'dir': ck}, {'op': 'dump', 'name': 'loaded'},
        {'op': 'train', 'seeds': [3]}, {'op': 'dump', 'name': 'after3'}], nproc=1)
    assert_params(full_params(saved, 'saved'), full_params(loaded, 'loaded'))
    assert loaded[0]['load_result'][0] == 2 and loaded[0]['loaded']['adam_steps'] == [2.0]
    assert close_loss(last_stage(saved)['losses'][2], loaded[0]['losses'][0])
    assert_params(full_params(saved, 'after3'), full_params(loaded, 'after3'), exact=False)


@pytest.mark.parametrize('flags,message', [
    (['--pipeline-model-parallel-size', '2', '--virtual-pipeline-model-parallel-size', '4'],
     '--num-layers 4 is not divisible by --pipeline-model-parallel-size 2 x '
     '--virtual-pipeline-model-parallel-size 4'),
    (['--virtual-pipeline-model-parallel-size', '2'],
     '(interleaved pipeline) need --pipeline-model-parallel-size > 1'),
    (['--pipeline-model-parallel-size', '2', '--num-layers-per-virtual-pipeline-stage', '3'],
     '--num-layers-per-virtual-pipeline-stage 3 does not divide the 2 decoder layers'),
    (['--pipeline-model-parallel-size', '2', '--num-layers-per-virtual-pipeline-stage', '1',
      '--virtual-pipeline-model-parallel-size', '3'],
     '--virtual-pipeline-model-parallel-size 3 contradicts --num-layers-per-virtual-pipeline-stage 1'),
    (['--virtual-pipeline-model-parallel-size', '0'], '--virtual-pipeline-model-parallel-size must be >= 1'),
])
def test_virtual_pipeline_flag_errors(flags, message):
    model = parse_args(['--num-layers', '4', '--train-manifest', 'x'] + flags).model
    with pytest.raises(ConfigError, match=re.escape(message)):
        model.validate(2)


def test_interleaving_needs_microbatches_in_multiples_of_pp():
    model = parse_args(['--num-layers', '8', '--pipeline-model-parallel-size', '2',
                        '--num-layers-per-virtual-pipeline-stage', '2', '--train-manifest', 'x']).model
    assert model.virtual_pipeline_size == 2
    model.validate(4, num_microbatches=4)
    with pytest.raises(ConfigError, match=re.escape(
            '--virtual-pipeline-model-parallel-size 2 (interleaved pipeline) needs a number of '
            'microbatches that is a multiple of --pipeline-model-parallel-size 2; --global-batch-size')):
        model.validate(4, num_microbatches=3)


def test_one_chunk_per_rank_is_no_interleaving():
    model = parse_args(['--pipeline-model-parallel-size', '2', '--num-layers', '4',
                        '--virtual-pipeline-model-parallel-size', '1', '--train-manifest', 'x']).model
    model.validate(2, num_microbatches=3)
    assert model.virtual_pipeline_size is None
    help_text = build_parser().format_help()
    assert '--virtual-pipeline-model-parallel-size' in help_text
    assert '--num-layers-per-virtual-pipeline-stage' in help_text
