"""Self-distillation of the MTP heads: KL from the trunk's own next-token distribution.

Which trunk position teaches. Depth k at position i predicts token i+k+1 from h_i and the tokens
i+1 .. i+k. The trunk's distribution for that same token, given the same tokens, is its main
head at position i+k (h_{i+k} reads tokens 0 .. i+k and predicts i+k+1): the teacher of depth k
at position i is the main head at i+k, under teacher forcing exactly what the verify step computes
at decode time when drafts 1..k-1 were right. Matching it, rather than the ground truth, trains
the heads to predict what the trunk will accept (EAGLE, FastMTP); with ``--training-mode head_only``
the trunk is frozen and the teacher fixed.

Logits are sharded over the vocabulary under tensor parallelism, so the softmaxes take their max
and normaliser over the TP group, and the backward is written out: d KL / d student = p_s - p_t.
"""

import torch


def _log_softmax(logits: torch.Tensor, group) -> torch.Tensor:
    """Log-softmax over a vocabulary sharded along the last dimension over ``group``."""
    top = logits.max(dim=-1, keepdim=True).values
    if group is not None and group.size() > 1:
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
    shifted = logits - top
    norm = shifted.exp().sum(dim=-1, keepdim=True)
    if group is not None and group.size() > 1:
        torch.distributed.all_reduce(norm, group=group)
    return shifted - norm.log()


class _VocabParallelKL(torch.autograd.Function):

    @staticmethod
    def forward(ctx, student, teacher, group):
        student_log = _log_softmax(student.float(), group)
        teacher_log = _log_softmax(teacher.float(), group)
        teacher_prob = teacher_log.exp()
        kl = (teacher_prob * (teacher_log - student_log)).sum(dim=-1)
        if group is not None and group.size() > 1:
            torch.distributed.all_reduce(kl, group=group)
        ctx.save_for_backward(student_log.exp() - teacher_prob)
        ctx.student_dtype = student.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        (grad_student,) = ctx.saved_tensors
        return (grad_student * grad_kl[..., None]).to(ctx.student_dtype), None, None


def vocab_parallel_kl(student: torch.Tensor, teacher: torch.Tensor, group=None) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row of logits ``[..., V/tp]`` sharded over
    ``group`` (fp32); the gradient reaches the student only."""
    return _VocabParallelKL.apply(student, teacher.detach(), group)
