"""Fused linear + cross-entropy of a vocabulary-parallel head (``--cross-entropy-fusion-impl linear``).

The head's logits ``[rows, V/tp]`` are never held. The forward sweeps the vocabulary shard in
chunks, keeping per row the running maximum, the sum of exponentials relative to it and the
target's logit (online log-sum-exp); the TP group then reduces them as Megatron's vocab-parallel
cross-entropy does (max, then the sums rescaled to it, then the target logit, which lives on one
rank). The backward recomputes one chunk of logits at a time to form
``d logits = g * (softmax - onehot)`` and adds its products with the weight and the hidden
states; the hidden-state gradient, partial per rank, is all-reduced over the TP group (what the
head's ColumnParallelLinear does). Memory: one chunk of logits, plus fp32 hidden-state gradients.

Two backends of the same maths: Triton kernels (``linear_ce_triton.py``, logits kept in registers)
on CUDA when triton imports, and torch chunks (this file) elsewhere. PyPI's fused kernels
(liger-kernel, cut-cross-entropy) take the whole vocabulary on one device and return a reduced
loss, so neither fits a head sharded over TP whose rows carry their own weights.
"""

import importlib.util

import torch

ROW_CHUNK = 1024
"""Rows of one logits chunk in the torch backend."""
VOCAB_CHUNK = 8192
"""Vocabulary entries of one logits chunk in the torch backend."""


def _row_chunks(rows: int, size: int):
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


class TorchChunks:
    """The torch backend: chunks of ``row_chunk`` x ``vocab_chunk`` logits, one at a time."""

    def __init__(self, row_chunk: int = ROW_CHUNK, vocab_chunk: int = VOCAB_CHUNK):
        self.row_chunk, self.vocab_chunk = row_chunk, vocab_chunk

    def _logits(self, hidden, weight, rows: slice, cols: slice) -> torch.Tensor:
        return (hidden[rows] @ weight[cols].t()).float()

    def forward_stats(self, hidden, weight, local_targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: max logit, sum of exp(logit - max) and target logit (0 where the target is
        not in this shard) over the shard ``weight`` [v, h]; ``local_targets`` -1 off the shard."""
        rows = hidden.shape[0]
        row_max = torch.full((rows,), float('-inf'), device=hidden.device)
        sum_exp = torch.zeros(rows, device=hidden.device)
        target_logit = torch.zeros(rows, device=hidden.device)
        for cols in _row_chunks(weight.shape[0], self.vocab_chunk):
            for part in _row_chunks(rows, self.row_chunk):
                logits = self._logits(hidden, weight, part, cols)
                new_max = torch.maximum(row_max[part], logits.max(dim=-1).values)
                sum_exp[part] = (sum_exp[part] * torch.exp(row_max[part] - new_max)
                                 + torch.exp(logits - new_max[:, None]).sum(dim=-1))
                row_max[part] = new_max
                target_logit[part] += self._pick(logits, local_targets[part], cols)
        return row_max, sum_exp, target_logit

    @staticmethod
    def _pick(logits, local_targets, cols: slice) -> torch.Tensor:
        """Each row's target logit where the target falls in ``cols``, else 0."""
        offset = local_targets - cols.start
        inside = (offset >= 0) & (offset < logits.shape[1])
        picked = torch.gather(logits, 1, offset.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
        return torch.where(inside, picked, torch.zeros_like(picked))

    def backward_grads(self, hidden, weight, local_targets, lse, grad_rows, need_hidden: bool,
                       need_weight: bool):
        """(fp32 [n, h] hidden-state gradient of this shard or None, [v, h] weight gradient in the
        weight's dtype or None) of sum_i grad_rows[i] * CE_i."""
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        for cols in _row_chunks(weight.shape[0], self.vocab_chunk):
            chunk_grad = torch.zeros(cols.stop - cols.start, weight.shape[1], device=weight.device)
            for part in _row_chunks(hidden.shape[0], self.row_chunk):
                logits = self._logits(hidden, weight, part, cols)
                dlogits = softmax_minus_onehot(logits, lse[part], local_targets[part] - cols.start)
                dlogits = (dlogits * grad_rows[part, None]).to(hidden.dtype)
                if need_hidden:
                    grad_hidden[part] += (dlogits @ weight[cols]).float()
                if need_weight:
                    chunk_grad += (dlogits.t() @ hidden[part]).float()
            if need_weight:
                grad_weight[cols] = chunk_grad.to(weight.dtype)
        return grad_hidden, grad_weight


def softmax_minus_onehot(logits, lse, offsets) -> torch.Tensor:
    """exp(logits - lse) with 1 taken off at each row's target column ``offsets`` (if inside)."""
    probs = torch.exp(logits - lse[:, None])
    inside = (offsets >= 0) & (offsets < logits.shape[1])
    onehot = torch.zeros_like(probs).scatter_(1, offsets.clamp(0, logits.shape[1] - 1)[:, None],
                                              inside[:, None].float())
    return probs - onehot


def triton_available() -> bool:
    """Whether the Triton backend can run here (CUDA and an importable triton)."""
    return torch.cuda.is_available() and importlib.util.find_spec('triton') is not None


def default_backend(device: torch.device):
    """Triton kernels for CUDA tensors where triton imports, torch chunks otherwise."""
    if device.type == 'cuda' and triton_available():
        from . import linear_ce_triton  # optional: needs triton, which CUDA builds of torch bring
        return linear_ce_triton.TritonKernels()
    return TorchChunks()


def _tp_size(group) -> int:
    return group.size() if group is not None else 1


class _LinearCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, targets, group, backend):
        shard = weight.shape[0]
        rank = torch.distributed.get_rank(group) if _tp_size(group) > 1 else 0
        local = targets - rank * shard
        local = torch.where((local >= 0) & (local < shard), local, torch.full_like(local, -1))
        row_max, sum_exp, target_logit = backend.forward_stats(hidden, weight, local)
        if _tp_size(group) > 1:
            shard_max = row_max.clone()
            torch.distributed.all_reduce(row_max, op=torch.distributed.ReduceOp.MAX, group=group)
            sums = torch.stack([sum_exp * torch.exp(shard_max - row_max), target_logit])
            torch.distributed.all_reduce(sums, group=group)
            sum_exp, target_logit = sums[0], sums[1]
        lse = row_max + torch.log(sum_exp)
        hits = (target_logit >= row_max).float()  # the target has the highest logit
        ctx.save_for_backward(hidden, weight, local, lse)
        ctx.group, ctx.backend = group, backend
        ctx.mark_non_differentiable(hits)
        return lse - target_logit, hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        hidden, weight, local, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden, grad_weight = ctx.backend.backward_grads(
            hidden, weight, local, lse, grad_loss.float().contiguous(), need_hidden, need_weight)
        if need_hidden:
            if _tp_size(ctx.group) > 1:
                torch.distributed.all_reduce(grad_hidden, group=ctx.group)
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         tp_group=None, backend=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [n] cross-entropy, fp32 [n] top-1 hits) of the head ``weight`` [V/tp, h] (this
    rank's vocabulary shard, in TP-rank order) over ``hidden`` [n, h] (the same rows on every TP
    rank) for ``targets`` [n] (global ids). The hits carry no gradient. ``backend``: default
    ``default_backend`` of the hidden states' device."""
    backend = backend if backend is not None else default_backend(hidden.device)
    if hidden.shape[0] == 0:  # a head without supervised rows (a short answer's MTP depth): no launch
        backend = TorchChunks()
    return _LinearCrossEntropy.apply(hidden.contiguous(), weight, targets.long(), tp_group, backend)

