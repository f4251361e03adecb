"""MoE MTP layers (--mtp-layer-pattern E): the real model under expert, pipeline and tensor
parallelism has the gradients of the plain-torch reference with a top-k MoE (no aux loss)."""


import pytest
import torch

from megatron_salm_mtp.checkpoint.save_load import _check_expert_parallel_change
from megatron_salm_mtp.config import ConfigError
from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)
from tests.support.train_utils import read_metrics, run_train

MOE = dict(mtp_layer_pattern='*E', num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=24)

LAYOUTS = {  # name: (config changes, processes, microbatches)
    'ep2-dp2-alltoall': (dict(expert_model_parallel_size=2, moe_token_dispatcher_type='alltoall'), 2, 2),
    'pp2-allgather': (dict(pipeline_model_parallel_size=2), 2, 2),
    # experts split over TP and EP; all-gather: gloo refuses the all-to-all path's uneven gathers
    'tp2-ep2-sp-allgather': (dict(tensor_model_parallel_size=2, expert_model_parallel_size=2,
                                  sequence_parallel=True), 4, 1),
}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('moe')
    cfg = tiny_config(**MOE)
    weights = init_weights(cfg, str(workdir))
    batch = speech_batch(cfg, 4, seed=33)
    torch.save(batch, workdir / 'batch.pt')
    _, totals, grads = reference_grads(cfg, weights, batch)
    return dict(cfg=cfg, workdir=workdir, totals=totals, grads=grads)


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_moe_mtp_matches_reference(setup, layout):
    changes, nproc, microbatches = LAYOUTS[layout]
    cfg = setup['cfg'].replace(**changes)
    workdir = setup['workdir']
    loss, grads, _, ranks = run_layout(cfg, str(workdir / 'weights.pt'), str(workdir / 'batch.pt'),
                                       str(workdir / layout), nproc, microbatches)
    ce_sum, count = setup['totals']['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(setup['grads'], grads)
    if cfg.expert_model_parallel_size > 1:  # each EP rank holds only its own experts
        local = [n for n in ranks[0]['grads'] if '.mtp.layers.0.' in n and '.local_experts.' in n]
        assert len(local) == 2 * cfg.num_experts // cfg.expert_model_parallel_size


@pytest.mark.parametrize('changes,message', [
    (dict(mtp_layer_pattern='*E'), '--num-experts'),
    (dict(num_experts=4), 'no layer uses experts'),
    (dict(MOE, num_experts=3, expert_model_parallel_size=2), 'not divisible by --expert-model-parallel-size 2'),
    (dict(MOE, expert_model_parallel_size=4), 'does not divide the data-parallel size 2'),
    (dict(MOE, moe_router_topk=5), '--moe-router-topk 5'),
    (dict(MOE, moe_token_dispatcher_type='flex'), '--moe-token-dispatcher-type'),
    (dict(MOE, moe_grouped_gemm=True, transformer_impl='local'), '--moe-grouped-gemm'),
    (dict(expert_model_parallel_size=2), '--expert-model-parallel-size 2 needs --num-experts'),
])
def test_moe_settings_that_cannot_work_name_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**changes).validate(world_size=2)


def test_training_at_ep2_then_resuming_weights_at_ep1(tmp_path):
    """The entry point trains MoE MTP heads at EP=2 (all-to-all, distributed optimizer, aux loss
    on) and saves; one process (EP=1) resumes the weights: experts are saved by global index."""
    from megatron_salm_mtp.tools.corpus.espeak import espeak_available
    from megatron_salm_mtp.tools.corpus.synth import build_corpus
    if not espeak_available():
        pytest.skip('espeak-ng unavailable')
    corpus = str(tmp_path / 'corpus')
    build_corpus(corpus, 16, seed=3, max_seconds=3.0)
    moe = ['--mtp-layer-pattern', 'E', '--num-experts', '4', '--moe-router-topk', '2',
           '--moe-aux-loss-coeff', '0.01', '--use-distributed-optimizer', '--lr-warmup-iters', '0',
           '--log-interval', '1']
    run_train(corpus, moe + ['--train-iters', '2', '--expert-model-parallel-size', '2',
                             '--moe-token-dispatcher-type', 'alltoall', '--save', str(tmp_path / 'ckpt'),
                             '--log-dir', str(tmp_path / 'ep2')], nproc=2)
    first = read_metrics(str(tmp_path / 'ep2'))
    assert all(r['mtp_2 loss'] == r['mtp_2 loss'] for r in first) and first[-1]['iteration'] == 2
    # Switch's load-balancing loss is 1 at perfect balance; a small random router stays near it
    assert 0.5 < first[-1]['load_balancing_loss'] < 4
    resumed = run_train(corpus, moe + ['--train-iters', '3', '--load', str(tmp_path / 'ckpt'),
                                       '--no-load-optim', '--log-dir', str(tmp_path / 'ep1')])
    assert 'resumed from' in resumed.stdout + resumed.stderr
    assert [r['iteration'] for r in read_metrics(str(tmp_path / 'ep1'))] == [3]


def test_optimizer_state_does_not_load_across_ep1_and_ep_above_1():
    layout = {'tp': 1, 'pp': 1, 'dp': 2}
    _check_expert_parallel_change(dict(layout, ep=2), dict(layout, ep=4), 'ckpt')  # both EP > 1
    with pytest.raises(ValueError, match='--no-load-optim'):
        _check_expert_parallel_change(dict(layout, ep=2), dict(layout, ep=1), 'ckpt')
