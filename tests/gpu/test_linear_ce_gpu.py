"""The fused linear + cross-entropy head's Triton kernels on a GPU, in bf16 at a 152k vocabulary,
against the unfused head (bf16 logits from the linear layer, fp32 cross-entropy: core's head at
TP=1): loss and gradients as close to fp32 truth as the unfused head's, the torch-chunk backend
in agreement, and no logits-sized tensor held. Skips without CUDA or triton.

    python -m pytest -q tests/gpu/test_linear_ce_gpu.py
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from megatron_salm_mtp.model.linear_ce import TorchChunks, linear_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec('triton') is None,
                                reason='needs CUDA and triton')

ROWS, WIDTH, VOCAB = 4096, 2048, 151936


def problem(dtype=torch.bfloat16):
    gen = torch.Generator(device='cuda').manual_seed(0)
    hidden = torch.randn(ROWS, WIDTH, device='cuda', generator=gen)
    weight = torch.randn(VOCAB, WIDTH, device='cuda', generator=gen) * 0.05
    targets = torch.randint(0, VOCAB, (ROWS,), device='cuda', generator=gen)
    targets[::4] = (hidden[::4] @ weight.t()).argmax(-1)  # some hits
    row_weights = torch.rand(ROWS, device='cuda', generator=gen) / ROWS
    row_weights[::5] = 0  # ignored rows
    return hidden.to(dtype), weight.to(dtype), targets, row_weights


def unfused(hidden, weight, targets, row_weights):
    """(loss, grad hidden, grad weight), fp32, of the head as the model runs it without fusion."""
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction='none')
    (loss * row_weights).sum().backward()
    return loss.detach(), hidden.grad.float(), weight.grad.float()


def fused(hidden, weight, targets, row_weights, backend=None):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = linear_cross_entropy(hidden, weight, targets, None, backend)
    (loss * row_weights).sum().backward()
    return loss.detach(), hidden.grad.float(), weight.grad.float()


def relative_errors(results, truth):
    return [((got - want).abs().max() / want.abs().max()).item() for got, want in zip(results, truth)]


def test_triton_head_is_as_accurate_as_the_unfused_head_in_bf16():
    data = problem()
    hidden, weight, targets, row_weights = data
    truth = unfused(hidden.float(), weight.float(), targets, row_weights)
    unfused_errors = relative_errors(unfused(*data), truth)
    fused_errors = relative_errors(fused(*data), truth)
    print('relative errors against fp32 (loss, grad hidden, grad weight): unfused',
          [f'{e:.1e}' for e in unfused_errors], 'fused', [f'{e:.1e}' for e in fused_errors])
    for name, mine, theirs in zip(('loss', 'grad hidden', 'grad weight'), fused_errors, unfused_errors):
        assert mine < max(2 * theirs, 1e-3), f'{name}: fused {mine:.1e} vs unfused {theirs:.1e}'


def test_triton_and_torch_chunk_backends_agree():
    data = problem()
    errors = relative_errors(fused(*data), fused(*data, backend=TorchChunks()))
    assert max(errors) < 2e-2, errors


def test_no_logits_sized_tensor_is_held():
    hidden, weight, targets, row_weights = problem()
    hidden.requires_grad_()
    weight.requires_grad_()
    logits_bytes = ROWS * VOCAB * 2  # what the unfused head holds in bf16 (and again in fp32)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss, _ = linear_cross_entropy(hidden, weight, targets)
    (loss * row_weights).sum().backward()
    torch.cuda.synchronize()
    gradients = weight.numel() * 2 + hidden.numel() * 2  # the results themselves
    extra = torch.cuda.max_memory_allocated() - base - gradients
    print(f'peak beyond inputs and gradients: {extra / 2**20:.0f} MiB; bf16 logits: {logits_bytes / 2**20:.0f} MiB')
    assert extra < logits_bytes / 4
