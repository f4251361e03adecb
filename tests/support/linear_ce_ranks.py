"""Problem, reference and fused runs of tests/unit/model/test_linear_ce.py; light to import, since the
tensor-parallel test's ranks are spawned processes that import it."""

import os

import torch
import torch.nn.functional as F

from megatron_salm_mtp.model.linear_ce import TorchChunks, linear_cross_entropy

ROWS, WIDTH, VOCAB = 37, 24, 200
SMALL_CHUNKS = TorchChunks(row_chunk=7, vocab_chunk=48)  # several chunks, ragged at both ends


def problem(seed: int = 0, rows: int = ROWS):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, WIDTH, generator=gen)
    weight = torch.randn(VOCAB, WIDTH, generator=gen) * 0.5
    targets = torch.randint(0, VOCAB, (rows,), generator=gen)
    targets[::3] = (hidden[::3] @ weight.t()).argmax(-1)  # a third of the rows are hits
    row_weights = torch.rand(rows, generator=gen)
    row_weights[::4] = 0  # ignored rows
    return hidden, weight, targets, row_weights


def reference(hidden, weight, targets, row_weights):
    """(loss, hits, grad hidden, grad weight) of the full logits tensor."""
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logits = hidden @ weight.t()
    loss = F.cross_entropy(logits, targets, reduction='none')
    (loss * row_weights).sum().backward()
    return loss.detach(), (logits.argmax(-1) == targets).float(), hidden.grad, weight.grad


def fused(hidden, weight, targets, row_weights, group=None, backend=SMALL_CHUNKS):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, hits = linear_cross_entropy(hidden, weight, targets, group, backend)
    (loss * row_weights).sum().backward()
    return loss.detach(), hits, hidden.grad, weight.grad


NAMES = ('loss', 'hits', 'grad hidden', 'grad weight')
RTOL = 1e-5  # fp32: relative to the largest entry


def assert_close(name: str, want, have, rtol=RTOL):
    err = (have - want).abs().max().item() / want.abs().max().item()
    assert err < rtol, f'{name}: relative error {err:.2e}'


def assert_no_rows_give_zero_gradients(backend):
    """A head without supervised rows (an MTP depth in a short answer): empty loss, zero weight
    gradient."""
    loss, hits, grad_hidden, grad_weight = fused(*problem(rows=0), backend=backend)
    assert loss.shape == hits.shape == (0,) and grad_hidden.shape == (0, WIDTH)
    assert torch.count_nonzero(grad_weight) == 0


def assert_same(expected, got, names=NAMES):
    """``expected`` and ``got``: (loss, hits, grad hidden, grad weight) or the leading ``names``."""
    for name, want, have in zip(names, expected, got):
        assert_close(name, want, have)


def tensor_parallel_rank(rank: int, port: int, out: str):
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                                         world_size=2)
    hidden, weight, targets, row_weights = problem(3)
    shard = weight.chunk(2)[rank]  # the head's vocabulary split, in rank order
    group = torch.distributed.new_group([0, 1])
    torch.save(fused(hidden, shard, targets, row_weights, group), os.path.join(out, f'rank{rank}.pt'))
    torch.distributed.destroy_process_group()
