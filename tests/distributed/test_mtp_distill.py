"""Self-distillation of the MTP heads (``--mtp-self-distillation``, model/distill.py).

* The KL and its hand-written backward against torch's.
* The real SALM's gradients at TP=2 with sequence parallelism and 2 microbatches (gloo, 2 ranks:
  the vocabulary-sharded softmaxes and the gathered teacher states) equal those of the plain-torch
  reference objective, where depth k at position i is trained on the KL from the detached main
  head at position i+k.
* A short CPU head_only run lowers that KL; the flag without MTP heads is refused.
"""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.model.distill import vocab_parallel_kl
from megatron_salm_mtp.model.freeze import apply_training_mode
from tests.support.inference_fixtures import counting_batch, tiny_salm
from tests.support.parallel_utils import (
    assert_grads_match,
    init_weights,
    reference_grads,
    run_layout,
    speech_batch,
    tiny_config,
)


def test_kl_and_its_gradient_match_torch():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(7, 1, 50, generator=gen, requires_grad=True)
    teacher = 3 * torch.randn(7, 1, 50, generator=gen, requires_grad=True)
    weights = torch.rand(7, 1, generator=gen)
    kl = vocab_parallel_kl(student, teacher)
    (kl * weights).sum().backward()
    expected_student = student.detach().clone().requires_grad_(True)
    expected = F.kl_div(F.log_softmax(expected_student, -1), F.log_softmax(teacher.detach(), -1),
                        log_target=True, reduction='none').sum(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad, expected_student.grad, rtol=1e-5, atol=1e-7)
    assert teacher.grad is None  # the teacher is a fixed target


def test_distilled_gradients_match_reference_at_tp2_with_sequence_parallelism(tmp_path):
    cfg = tiny_config(mtp_self_distillation=True)
    weights = init_weights(cfg, str(tmp_path))
    batch = speech_batch(cfg, 4, seed=6)
    torch.save(batch, tmp_path / 'batch.pt')
    _, totals, expected = reference_grads(cfg, weights, batch)
    layout = cfg.replace(tensor_model_parallel_size=2, sequence_parallel=True)
    _, grads, _, ranks = run_layout(layout, str(tmp_path / 'weights.pt'), str(tmp_path / 'batch.pt'),
                                    str(tmp_path / 'tp2sp'), nproc=2, microbatches=2)
    assert_grads_match(expected, grads)
    stats = sum(r['mtp_stats'] for r in ranks if r['mtp_stats'] is not None and r['tp_rank'] == 0)
    for k in range(cfg.mtp_depths):  # the logged mtp_k loss is the summed KL
        kl_sum, count = totals[f'mtp_{k + 1}']
        assert stats[1, k].item() == count.item() > 0
        assert stats[0, k].item() == pytest.approx(kl_sum.item(), rel=1e-5)


def _mtp_kl(model, batch) -> list:
    """Per-depth mean KL of ``model``'s heads on ``batch`` (evaluation window of its stats)."""
    model.eval()
    stats = model.language_model.mtp_stats
    stats.reset()
    with torch.no_grad():
        model(**batch)
    return [stats.reduce()[f'mtp_{k + 1} loss'] for k in range(model.cfg.mtp_depths)]


def test_head_only_distillation_lowers_the_kl_to_the_trunk(single_rank_parallel):
    model = tiny_salm(seed=41, init_method_std=0.02, mtp_num_layers=2, mtp_self_distillation=True)
    apply_training_mode(model, 'head_only')
    trunk = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    held_out, _ = counting_batch(model.cfg, 8, seed=42)
    before = _mtp_kl(model, held_out)
    MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(30):
        batch, _ = counting_batch(model.cfg, 8, seed=100 + step)
        supervised = batch['loss_mask'].sum()
        model.language_model.set_mtp_loss_weights(torch.full((2,), 1.0 / float(supervised)))
        loss = (model(**batch) * batch['loss_mask']).sum() / supervised
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _mtp_kl(model, held_out)
    assert all(a < 0.7 * b for a, b in zip(after, before)), (before, after)
    for name, param in model.named_parameters():  # the teacher stayed what it was
        if name in trunk:
            assert torch.equal(param, trunk[name]), name


def test_distillation_needs_mtp_heads():
    with pytest.raises(ConfigError, match='--mtp-self-distillation needs MTP heads'):
        tiny_config(mtp_num_layers=None, mtp_self_distillation=True).validate(1)
