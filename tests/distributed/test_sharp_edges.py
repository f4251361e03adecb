"""Megatron-Core 0.16.1's MTP sharp edges (docs/design.md), each guarded and tested."""


import pytest
import torch

from megatron_salm_mtp.model.mtp import mtp_loss_weights, mtp_target_masks, supervised_counts
from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)


def test_rank_without_supervised_tokens_matches_reference(tmp_path):
    """Core divides each rank's MTP loss by its own token count: NaN when it is zero (#3396).
    Here DP rank 1 gets only samples without an answer; gradients stay finite and exact."""
    cfg = tiny_config()
    weights = init_weights(cfg, str(tmp_path))
    batch = speech_batch(cfg, 4, seed=11, answer_lengths=[4, 9, 0, 0])
    torch.save(batch, tmp_path / 'batch.pt')
    _, totals, expected = reference_grads(cfg, weights, batch)
    loss, grads, _, ranks = run_layout(cfg, str(tmp_path / 'weights.pt'), str(tmp_path / 'batch.pt'),
                                       str(tmp_path / 'dp2'), nproc=2, microbatches=2)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert_grads_match(expected, grads)
    idle = [r for r in ranks if r['dp_rank'] == 1][0]
    assert idle['mtp_stats'][1].sum() == 0  # that rank really had no MTP target


def test_mtp_logging_on_every_pipeline_stage(tmp_path):
    """Core's clean_loss_in_tracker() raises KeyError on stages without MTP; the plugin's per-depth
    metrics are {} there and the exact global per-token means on the MTP stage."""
    cfg = tiny_config(pipeline_model_parallel_size=2)
    init_weights(cfg, str(tmp_path))
    batch = speech_batch(cfg, 4, seed=3)
    torch.save(batch, tmp_path / 'batch.pt')
    _, _, _, ranks = run_layout(cfg, str(tmp_path / 'weights.pt'), str(tmp_path / 'batch.pt'),
                                str(tmp_path / 'pp2'), nproc=2, microbatches=2)
    first, last = sorted(ranks, key=lambda r: r['pp_rank'])
    assert first['metrics'] == {}
    weights = torch.load(tmp_path / 'weights.pt')
    _, totals, _ = reference_grads(cfg, weights, batch)
    for k in (1, 2):
        ce, n = totals[f'mtp_{k}']
        assert last['metrics'][f'mtp_{k} loss'] == pytest.approx((ce / n).item(), rel=1e-5)
        assert 0.0 <= last['metrics'][f'mtp_{k} acc'] <= 1.0


def test_mtp_masks_follow_answer_and_skip_placeholder_paths():
    audio = 7
    tokens = torch.tensor([[1, audio, audio, 5, 6, 8, 9, 2]])
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.float)  # labels 3..6 supervised
    depth1, depth2 = mtp_target_masks(loss_mask, tokens, 2, audio, mask_placeholder_paths=True)
    # depth 1 at i predicts label i+1 and consumes token i+1
    assert depth1.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]  # i=1: label 2 unsupervised
    # depth 2 at i consumes tokens i+1, i+2: i=0 consumes audio (masked), i=1 consumes audio too
    assert depth2.tolist() == [[0, 0, 1, 1, 0, 0, 0, 0]]
    unmasked = mtp_target_masks(loss_mask, tokens, 2, audio, mask_placeholder_paths=False)[1]
    assert unmasked.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_loss_weights_never_nan():
    counts = supervised_counts([{'loss_mask': torch.zeros(2, 6), 'tokens': torch.zeros(2, 6, dtype=torch.long)}],
                               depths=2, audio_token_id=9, mask_placeholder_paths=True)
    assert counts.tolist() == [0.0, 0.0, 0.0]
    weights = mtp_loss_weights(counts, 0.1)
    assert torch.equal(weights, torch.zeros(2))
    weights = mtp_loss_weights(torch.tensor([100.0, 50.0, 0.0], dtype=torch.float64), 0.2)
    assert weights.tolist() == pytest.approx([0.1 * 100 / 50, 0.0])
