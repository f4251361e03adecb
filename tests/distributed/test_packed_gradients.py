"""Packed sequences in the model (portable spec, gloo, fp32, one process per rank): the same
utterances packed several to a row and padded one to a row give the same losses and gradients,
against the plain-torch reference, which unpacks rows itself (``reference.unpack``)."""

import os

import pytest
import torch

from megatron_salm_mtp.data.packing import segment_ids
from megatron_salm_mtp.model.mtp import supervised_counts
from megatron_salm_mtp.model.packed import MASK, THD, block_causal_mask, per_position_rotary
from megatron_salm_mtp.model.salm import SALM
from megatron_salm_mtp.model.specs import LOCAL
from tests.support.parallel_utils import (
    assert_grads_match,
    pack_rows,
    reference_grads,
    run_plan,
    speech_batch,
    tiny_config,
)
from tests.support.reference import salm_objective

# Two utterances per row; 5 and 2 are supervised from their first position on, so a depth-k
# target or input taken across the boundary from 1 and 6 would enter the loss.
ROWS = [[1, 5], [0, 3], [6, 2], [4, 7]]
ANSWER_FIRST = (5, 2)


# (tp, pp, vp, DP ranks, microbatches per rank, packed format, MTP self-distillation), all in one
# launch of two ranks; the THD layout is the TE spec's, run through the portable attention.
LAYOUTS = {
    'tp2-sp-mask': (2, 1, None, 1, 1, MASK, False),
    'tp2-sp-thd': (2, 1, None, 1, 1, THD, False),
    'pp2-mask': (1, 2, None, 1, 2, MASK, False),
    'pp2-thd': (1, 2, None, 1, 2, THD, False),
    'dp2-mask': (1, 1, None, 2, 2, MASK, False),
    'pp2-vp2-mask': (1, 2, 2, 1, 4, MASK, False),
    'dp2-thd-distill': (1, 1, None, 2, 2, THD, True),  # depth k's teacher is position i + k's
}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """The padded batch, its packed rows, every layout's run on the packed rows, and the reference
    on the padded batch (4 layers: the interleaved pipeline has a layer per chunk)."""
    workdir = str(tmp_path_factory.mktemp('packed'))
    cfg = tiny_config(num_layers=4, ctc_loss_weight=0.7)
    padded = speech_batch(cfg, 8, seed=5, answer_lengths=[9, 4, 10, 6, 3, 8, 10, 5])
    for u in ANSWER_FIRST:
        padded['loss_mask'][u, 0] = 1.0
    packed = pack_rows(padded, ROWS, cfg.seq_length)
    path = os.path.join(workdir, 'packed.pt')
    torch.save(packed, path)
    layouts = {name: (cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                  virtual_pipeline_model_parallel_size=vp, sequence_parallel=tp > 1,
                                  mtp_self_distillation=distill),
                      microbatches, packed_format)
               for name, (tp, pp, vp, _, microbatches, packed_format, distill) in LAYOUTS.items()}
    weights, runs = run_plan(cfg, layouts, path, workdir, nproc=2)
    references = {distill: reference_grads(cfg.replace(mtp_self_distillation=distill), weights, padded)
                  for distill in (False, True)}
    _, totals, grads = references[False]
    return dict(cfg=cfg, padded=padded, packed=packed, weights=weights, runs=runs, layouts=layouts,
                references=references, totals=totals, grads=grads)


def test_the_batch_tests_the_boundaries(setup):
    """Packed rows hold several utterances, and ignoring their boundaries would change the MTP
    counts: the end-to-end tests below would see a leaking roll."""
    cfg, packed = setup['cfg'], setup['packed']
    assert (segment_ids(packed['cu_seqlens'], cfg.seq_length).max(1).values >= 1).all()
    exact = supervised_counts([packed], 2, cfg.audio_token_id, True)
    leaking = supervised_counts([{**packed, 'cu_seqlens': None}], 2, cfg.audio_token_id, True)
    padded = supervised_counts([setup['padded']], 2, cfg.audio_token_id, True)
    assert torch.equal(exact, padded) and (leaking[1:] > exact[1:]).all()


def test_reference_unpacks_rows(setup):
    packed = salm_objective(setup['weights'], setup['cfg'], setup['packed'])
    for key, expected in setup['totals'].items():
        if key == 'ctc infeasible':
            assert packed[key] == expected
            continue
        torch.testing.assert_close(packed[key][0], expected[0], rtol=1e-6, atol=1e-6)
        assert packed[key][1] == expected[1]


def test_block_causal_mask_and_rotary_positions():
    segments = torch.tensor([[0, 0, 1, 1, 1, 2]])
    visible = ~block_causal_mask(segments)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(visible, expected)
    angles = torch.arange(8.0)[:, None, None, None] * torch.tensor([1.0, 0.5])
    positions = torch.tensor([[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    rotary = per_position_rotary(angles, positions)
    assert rotary.shape == (6, 2, 1, 2)
    assert torch.equal(rotary[:, 0, 0, 0], positions[0].float())
    assert torch.equal(rotary[:, 1, 0, 1], positions[1].float() * 0.5)


@pytest.mark.parametrize('name', list(LAYOUTS))
def test_packed_gradients_match_padded_reference(setup, name):
    cfg, microbatches, _ = setup['layouts'][name]
    loss, grads, copies, ranks = setup['runs'][name]
    assert 1 + max(r['dp_rank'] for r in ranks) == LAYOUTS[name][3]  # the layout ran as asked
    _, totals, expected_grads = setup['references'][cfg.mtp_self_distillation]
    ce_sum, count = totals['main']
    assert loss == pytest.approx((ce_sum / count).item(), rel=1e-5)
    assert_grads_match(expected_grads, grads)
    for param, copy in copies.items():  # the MTP stage's embedding copy gets the same gradient
        torch.testing.assert_close(copy, grads[param], rtol=0, atol=0)
    # summed over DP ranks (TP ranks hold the same statistics)
    stats = sum(r['mtp_stats'] for r in ranks if r['mtp_stats'] is not None and r['tp_rank'] == 0)
    for k in range(cfg.mtp_depths):  # the logged MTP losses and counts are the reference's
        ce_k, n_k = totals[f'mtp_{k + 1}']
        assert stats[1, k].item() == n_k.item()
        assert stats[0, k].item() == pytest.approx(ce_k.item(), rel=1e-5)


def test_thd_layout_gives_the_row_layout_losses_and_gradients(single_rank_parallel):
    """Core's THD path (PackedSeqParams, per-segment RoPE and MTP roll; the TE spec's layout),
    run through the portable attention on CPU, against the [b, s] rows with the explicit mask."""
    cfg = tiny_config()
    packed = pack_rows(speech_batch(cfg, 8, seed=7, answer_lengths=[9, 4, 10, 6, 3, 8, 10, 5]),
                       ROWS, cfg.seq_length)
    torch.manual_seed(0)
    model = SALM(cfg, LOCAL)
    model.language_model.set_mtp_loss_weights(torch.tensor([0.5, 0.25]))
    results = {}
    for layout in (MASK, THD):
        model.packed_format = layout
        model.zero_grad()
        model.language_model.mtp_stats.reset()
        loss = model(packed['tokens'], packed['position_ids'], labels=packed['labels'],
                     loss_mask=packed['loss_mask'], audio_features=packed['audio_features'],
                     audio_feature_lengths=packed['audio_feature_lengths'],
                     cu_seqlens=packed['cu_seqlens'])
        (loss * packed['loss_mask']).sum().backward()
        results[layout] = (loss.detach(), model.language_model.mtp_stats.values.clone(),
                           {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_mask, stats_mask, grads_mask), (loss_thd, stats_thd, grads_thd) = results[MASK], results[THD]
    assert loss_thd.shape == packed['tokens'].shape
    torch.testing.assert_close(loss_thd, loss_mask, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats_thd, stats_mask, rtol=1e-5, atol=1e-6)
    assert stats_mask[1].min() > 0  # every depth supervised something
    assert set(grads_thd) == set(grads_mask)
    for name, grad in grads_mask.items():
        scale = grad.abs().max().item()
        err = (grads_thd[name] - grad).abs().max().item() / max(scale, 1e-30)
        assert err < 2e-5, f'{name}: relative error {err:.2e}'
