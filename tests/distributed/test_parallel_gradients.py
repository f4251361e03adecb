"""The heart of the suite: the real Megatron-Core SALM under TP/PP/DP/SP (gloo, one process per
rank) has the gradients of the plain-torch reference objective

    sum CE_main / N_main + lambda / D * sum_k sum CE_k / N_k + w * sum CTC / N_ctc

over the global batch, for every layout and microbatch split (the CTC term's loss lives on the
first pipeline stage, the others on the last). One layout also runs without CTC, the default.
"""

import os

import pytest
import torch

from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)

GLOBAL_BATCH = 8


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('grads'))
    cfg = tiny_config(ctc_loss_weight=0.7)
    weights = init_weights(cfg, workdir)
    batch = speech_batch(cfg, GLOBAL_BATCH, seed=5)
    batch_path = os.path.join(workdir, 'batch.pt')
    torch.save(batch, batch_path)
    loss, totals, grads = reference_grads(cfg, weights, batch)
    return dict(cfg=cfg, workdir=workdir, batch_path=batch_path, weights=weights, totals=totals,
                grads=grads)


LAYOUTS = [  # (tp, pp, nproc, microbatches, sequence_parallel)
    (1, 1, 1, 1, False),
    (1, 1, 1, 4, False),
    (2, 1, 2, 1, False),
    (2, 1, 2, 2, True),
    (1, 2, 2, 4, False),
    (1, 1, 2, 1, False),
    (1, 1, 2, 4, False),
    (2, 2, 4, 2, False),
    (2, 1, 4, 2, True),
    (1, 2, 4, 2, False),
]


@pytest.mark.parametrize('tp,pp,nproc,microbatches,sp', LAYOUTS,
                         ids=[f'tp{t}-pp{p}-dp{n // (t * p)}-mb{m}{"-sp" if s else ""}'
                              for t, p, n, m, s in LAYOUTS])
def test_gradients_match_reference(setup, tp, pp, nproc, microbatches, sp):
    cfg = setup['cfg'].replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                               sequence_parallel=sp)
    workdir = os.path.join(setup['workdir'], f'tp{tp}pp{pp}n{nproc}m{microbatches}sp{int(sp)}')
    loss, grads, copies, ranks = run_layout(cfg, os.path.join(setup['workdir'], 'weights.pt'),
                                            setup['batch_path'], workdir, nproc, microbatches)
    ce_sum, count = setup['totals']['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(setup['grads'], grads)
    for name, copy in copies.items():  # the MTP stage's embedding copy gets the same gradient
        torch.testing.assert_close(copy, grads[name], rtol=0, atol=0)
    assert_mtp_losses(setup['totals'], cfg, ranks)
    assert_ctc_metrics(setup['totals'], ranks)
    # The CTC head is replicated over TP (and DP): every rank that holds it has the same gradient.
    holders = [r['grads'] for r in ranks if 'ctc_head.weight' in r['grads']]
    assert len(holders) == tp * (nproc // (tp * pp))
    for name in ('ctc_head.weight', 'ctc_head.bias'):
        for grads in holders[1:]:
            torch.testing.assert_close(grads[name][0], holders[0][name][0], rtol=0, atol=0)


def assert_mtp_losses(totals: dict, cfg, ranks):
    """The MTP losses themselves: per-depth sums and counts of the DeepSeek-V3 formula."""
    stats = [r['mtp_stats'] for r in ranks if r['mtp_stats'] is not None and r['tp_rank'] == 0]
    total = sum(stats)
    for k in range(cfg.mtp_depths):
        ce_k, n_k = totals[f'mtp_{k + 1}']
        assert total[1, k].item() == n_k.item()
        assert total[0, k].item() == pytest.approx(ce_k.item(), rel=1e-5)


def assert_ctc_metrics(totals: dict, ranks):
    """The logged CTC figures, on the rank that writes the log (last stage, TP and DP rank 0)."""
    reporting = next(r for r in ranks if r['pp_rank'] == max(q['pp_rank'] for q in ranks)
                     and r['tp_rank'] == 0 and r['dp_rank'] == 0)
    ctc_sum, n_ctc = totals['ctc']
    assert totals['ctc infeasible'] == 2  # by construction of the batch (parallel_utils.ctc_targets)
    assert reporting['metrics']['ctc infeasible'] == 2
    assert reporting['metrics']['ctc loss'] == pytest.approx((ctc_sum / n_ctc).item(), rel=1e-5)


def test_gradients_without_ctc_match_reference(setup):
    """--ctc-loss-weight 0 (the default): no CTC head, the objective without its term."""
    cfg = setup['cfg'].replace(ctc_loss_weight=0.0, tensor_model_parallel_size=2,
                               pipeline_model_parallel_size=2)
    weights = {k: v for k, v in setup['weights'].items() if not k.startswith('ctc_head.')}
    batch = torch.load(setup['batch_path'])
    _, _, expected = reference_grads(cfg, weights, batch)
    loss, grads, _, ranks = run_layout(cfg, os.path.join(setup['workdir'], 'weights.pt'),
                                       setup['batch_path'], os.path.join(setup['workdir'], 'no_ctc'), 4, 2)
    assert_grads_match(expected, grads)
    assert all('ctc loss' not in r['metrics'] for r in ranks)


def test_intermediate_ctc_gradients_match_reference(tmp_path):
    """InterCTC on the first of three encoder layers in the joint objective, at PP=2 x DP=2 with 2
    microbatches (its loss lives on the first stage, the log on the last)."""
    cfg = tiny_config(ctc_loss_weight=0.7, encoder_num_layers=3, ctc_intermediate_layer=1)
    weights = init_weights(cfg, str(tmp_path))
    batch_path = str(tmp_path / 'batch.pt')
    torch.save(speech_batch(cfg, GLOBAL_BATCH, seed=5), batch_path)
    _, totals, expected = reference_grads(cfg, weights, torch.load(batch_path))
    _, grads, _, ranks = run_layout(cfg.replace(pipeline_model_parallel_size=2), str(tmp_path / 'weights.pt'),
                                    batch_path, str(tmp_path / 'pp2'), 4, 2)
    assert_grads_match(expected, grads)
    assert_ctc_metrics(totals, ranks)
    lower_sum, n_ctc = totals['ctc intermediate']
    logged = next(r['metrics'] for r in ranks if 'ctc intermediate loss' in r['metrics'] and r['pp_rank'] == 1)
    assert logged['ctc intermediate loss'] == pytest.approx((lower_sum / n_ctc).item(), rel=1e-5)


def test_encoder_layer_mix_gradients_match_reference(tmp_path):
    """The projector reading a learnt mix of three encoder layers (weights drawn unequal), with
    intermediate CTC on layer 2, at TP=2 x PP=2 with 2 microbatches: the mix weights' gradient is
    the reference's, and the same on both TP ranks that hold them."""
    cfg = tiny_config(ctc_loss_weight=0.7, encoder_num_layers=3, ctc_intermediate_layer=2, encoder_layer_mix=True)
    weights = init_weights(cfg, str(tmp_path))
    weights['audio_projector.layer_weights'] = torch.tensor([0.5, -1.0, 0.8])
    torch.save(weights, tmp_path / 'weights.pt')
    batch_path = str(tmp_path / 'batch.pt')
    torch.save(speech_batch(cfg, GLOBAL_BATCH, seed=5), batch_path)
    _, totals, expected = reference_grads(cfg, weights, torch.load(batch_path))
    assert expected['audio_projector.layer_weights'].abs().min() > 0
    _, grads, _, ranks = run_layout(cfg.replace(tensor_model_parallel_size=2, pipeline_model_parallel_size=2),
                                    str(tmp_path / 'weights.pt'), batch_path, str(tmp_path / 'tp2pp2'), 4, 2)
    assert_grads_match(expected, grads)
    assert_ctc_metrics(totals, ranks)
    holders = [r['grads']['audio_projector.layer_weights'][0] for r in ranks
               if 'audio_projector.layer_weights' in r['grads']]
    assert len(holders) == 2
    torch.testing.assert_close(holders[1], holders[0], rtol=0, atol=0)


def test_full_sequence_logits_give_the_same_gradients(setup):
    """core's way (head over every position) and the default (supervised positions only) agree."""
    cfg = setup['cfg'].replace(tensor_model_parallel_size=2, sequence_parallel=True,
                               full_sequence_logits=True)
    loss, grads, _, _ = run_layout(cfg, os.path.join(setup['workdir'], 'weights.pt'),
                                   setup['batch_path'], os.path.join(setup['workdir'], 'full'), 2, 2)
    assert_grads_match(setup['grads'], grads)


def test_chunked_heads_and_mtp_recompute_give_the_same_gradients(setup):
    """Heads in recomputed chunks of 5 rows (several per microbatch) and recomputed MTP layers:
    the same objective, so the same gradients."""
    cfg = setup['cfg'].replace(tensor_model_parallel_size=2, sequence_parallel=True,
                               head_chunk_rows=5, mtp_recompute=True)
    loss, grads, _, _ = run_layout(cfg, os.path.join(setup['workdir'], 'weights.pt'),
                                   setup['batch_path'], os.path.join(setup['workdir'], 'chunked'), 2, 2)
    ce_sum, count = setup['totals']['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(setup['grads'], grads)


@pytest.mark.parametrize('tp,sp', [(1, False), (2, True)], ids=['tp1', 'tp2-sp'])
def test_fused_linear_cross_entropy_gives_the_same_gradients(setup, tp, sp):
    """--cross-entropy-fusion-impl linear: the main and MTP heads hold no logits (model/linear_ce.py,
    torch chunks on CPU); the same objective under the loss hook's masks and depth weights, so
    the same loss, per-depth MTP losses and gradients (hidden states through the whole model,
    head weight, MTP layers)."""
    cfg = setup['cfg'].replace(tensor_model_parallel_size=tp, sequence_parallel=sp,
                               cross_entropy_fusion_impl='linear')
    loss, grads, _, ranks = run_layout(cfg, os.path.join(setup['workdir'], 'weights.pt'), setup['batch_path'],
                                       os.path.join(setup['workdir'], f'fused_ce_tp{tp}'), tp, 2)
    ce_sum, count = setup['totals']['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(setup['grads'], grads)
    assert_mtp_losses(setup['totals'], cfg, ranks)
