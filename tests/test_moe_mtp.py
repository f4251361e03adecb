"""MoE MTP layers (--mtp-layer-pattern E): the real model under expert, pipeline and tensor
parallelism has the gradients of the plain-torch reference with a top-k MoE (no aux loss)."""

import os

import pytest
import torch

from megatron_salm_mtp.config import ConfigError
from parallel_utils import init_weights, reference_grads, run_layout, speech_batch, tiny_config
from test_parallel_gradients import assert_grads_match

MOE = dict(mtp_layer_pattern='*E', num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=24)

LAYOUTS = {  # name: (config changes, processes, microbatches)
    'ep2-dp2-alltoall': (dict(expert_model_parallel_size=2, moe_token_dispatcher_type='alltoall'), 2, 2),
    'pp2-allgather': (dict(pipeline_model_parallel_size=2), 2, 2),
    'tp2-sp-allgather': (dict(tensor_model_parallel_size=2, sequence_parallel=True), 2, 1),
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
