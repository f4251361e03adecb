"""CTC on the audio encoder (``--ctc-loss-weight``): an auxiliary loss that makes the encoder listen.

Head. One linear map from the encoder width to the tokenizer's vocabulary plus a blank (the last
id), on the encoder output at 50 Hz, before the projector stacks frames: at 20 ms per frame a
transcript fits even in bytes (4x stacked, 12.5 Hz is too slow for byte targets of fast speech),
and the CTC gradient reaches the encoder directly. The head lives on the first pipeline stage with
the encoder, replicated on every TP rank: the encoder output it reads is the same on all of them
(its last layers end in TP all-reduces), so each computes the same loss and the same head
gradients, and the gradient it adds to the encoder output is the same full gradient on every rank
(the projector's part arrives all-reduced by its column-parallel input). No TP reduction is needed,
as for the encoder's LayerNorms.

Targets (data side, ``dataset.ctc_targets``): per audio, the answer text's token ids. An audio whose
target cannot be aligned - CTC needs as many frames as target ids plus one per repeated neighbour -
is left out of the loss and of N_ctc, and counted (``ctc infeasible`` in the logs). That is decided
on the host (``ctc_lengths``), so no infinite loss is ever produced and the counts are exact.

Intermediate CTC (``--ctc-intermediate-layer``, InterCTC as in ESPnet): the same head also reads
one lower encoder layer's output, through the encoder's final LayerNorm (``AudioEncoder.encode``),
and the summed CTC loss becomes (1 - lambda) x the last layer's + lambda x that layer's, per
audio and over the same targets, so the weighting below holds as it is. The logs keep 'ctc loss'
the last layer's and add 'ctc intermediate loss'.

Weighting. Core's schedules take the loss from the last stage; the CTC loss lives on the first. Its
per-utterance summed CE enters the backward pass through ``AuxLossInjector`` on the first stage's
embeddings with weight ``w * N_main / N_ctc`` (N_ctc: CTC target ids of the whole global batch);
finalize_model_grads divides every gradient by N_main, so the objective gains ``w * sum CTC / N_ctc``
at any TP, PP, DP size and microbatch split.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..data.frames import encoder_frames

CTC_LENGTHS = 'ctc_lengths'
"""Key of a prepared microbatch's :class:`CTCLengths` (``host_inputs.prepare_microbatch``)."""


class CTCLengths(NamedTuple):
    """Host facts of one microbatch's CTC term, per audio."""
    frames: list[int]  # encoder frames (CTC input length)
    targets: list[int]  # target ids; 0 where there is no target or it cannot be aligned
    infeasible: int  # audios with a target too long for their frames


def required_frames(target: Sequence[int]) -> int:
    """Fewest CTC input frames that can emit ``target``: one per id, plus a blank between repeats."""
    return len(target) + sum(1 for a, b in zip(target, target[1:]) if a == b)


def ctc_lengths(audio_feature_lengths: torch.Tensor, ctc_targets: torch.Tensor,
                ctc_target_lengths: torch.Tensor) -> CTCLengths:
    """CTC lengths of a microbatch from its CPU tensors (the batch contract's ``ctc_*`` keys)."""
    frames = [encoder_frames(int(n)) for n in audio_feature_lengths]
    targets, infeasible = [], 0
    for row, (n_frames, length) in enumerate(zip(frames, ctc_target_lengths.tolist())):
        fits = required_frames(ctc_targets[row, :length].tolist()) <= n_frames
        infeasible += int(length > 0 and not fits)
        targets.append(length if fits else 0)
    return CTCLengths(frames, targets, infeasible)


def ctc_loss_weight(n_main: torch.Tensor, n_ctc: torch.Tensor, weight: float) -> torch.Tensor:
    """Weight of the summed CTC loss so that finalize's 1/N_main leaves ``weight / N_ctc``;
    0 for a global batch without any CTC target (instead of a NaN)."""
    value = weight * n_main / n_ctc.clamp(min=1)
    return torch.where(n_ctc > 0, value, torch.zeros_like(value)).float()


def ctc_head(encoder_width: int, vocab_size: int, std: float, dtype: torch.dtype) -> torch.nn.Linear:
    """The head: encoder width -> ``vocab_size`` ids + the blank (id ``vocab_size``)."""
    head = torch.nn.Linear(encoder_width, vocab_size + 1, dtype=dtype)
    torch.nn.init.normal_(head.weight, std=std)
    torch.nn.init.zeros_(head.bias)
    return head


def ctc_objective_sum(head: torch.nn.Linear, frames: torch.Tensor, intermediate: torch.Tensor | None,
                      targets: torch.Tensor, lengths: CTCLengths, intermediate_weight: float,
                      stats: 'CTCStats') -> torch.Tensor:
    """The summed CTC objective of the encoder's output ``frames`` and of its ``intermediate``
    layer's (None without), recorded in ``stats``: the last layer's loss, or the mix of both."""
    last = ctc_loss_sum(head, frames, targets, lengths)
    if intermediate is None:
        stats.add(last, lengths)
        return last
    lower = ctc_loss_sum(head, intermediate, targets, lengths)
    stats.add(last, lengths, lower)
    return (1 - intermediate_weight) * last + intermediate_weight * lower


def ctc_loss_sum(head: torch.nn.Linear, frames: torch.Tensor, targets: torch.Tensor,
                 lengths: CTCLengths) -> torch.Tensor:
    """Summed CTC loss (nats, fp32) over the audios with a target. frames [n, T, d] (the encoder
    output); targets [n, L] (padded). The lengths come from the host, so nothing is read back
    from the GPU (torch's CUDA kernel still copies them to the device itself)."""
    log_probs = head(frames).float().log_softmax(-1).transpose(0, 1)  # [T, n, V + 1]
    per_audio = F.ctc_loss(log_probs, targets, lengths.frames, lengths.targets,
                           blank=head.out_features - 1, reduction='none', zero_infinity=False)
    # An empty target still has a (finite) all-blank loss: leave those audios out.
    has_target = torch.tensor([n > 0 for n in lengths.targets]).to(per_audio.device, non_blocking=True)
    return torch.where(has_target, per_audio, torch.zeros_like(per_audio)).sum()


class AuxLossInjector(torch.autograd.Function):
    """Identity on ``output``; in backward, also the gradient of ``loss`` (scale 1), as core's
    MTPLossAutoScaler does for MTP: a loss computed on a stage whose output is not the loss."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, loss: torch.Tensor):
        ctx.save_for_backward(loss)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (loss,) = ctx.saved_tensors
        return grad_output, torch.ones_like(loss)


class CTCStats:
    """Summed CTC loss of the last layer, target ids, infeasible audios and summed CTC loss of the
    intermediate layer (0 without one) of one logging window."""

    def __init__(self):
        self.reset()

    def reset(self):
        device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
        self.values = torch.zeros(4, dtype=torch.float64, device=device)

    def add(self, loss_sum: torch.Tensor, lengths: CTCLengths, intermediate_sum: torch.Tensor | None = None):
        counts = torch.tensor([sum(lengths.targets), lengths.infeasible], dtype=torch.float64)
        self.values[0] += loss_sum.detach().to(self.values)
        self.values[1:3] += counts.to(self.values.device, non_blocking=True)
        if intermediate_sum is not None:
            self.values[3] += intermediate_sum.detach().to(self.values)


def reduce_ctc_stats(stats: CTCStats | None, groups, intermediate: bool = False) -> dict:
    """{'ctc loss' (per target id), 'ctc infeasible' (audios)}, with ``intermediate`` also 'ctc
    intermediate loss', summed over ``groups`` (DP, then PP: the stats live on the first stage,
    the log is written on the last). Every rank calls it, with ``stats`` None where it has no CTC
    head."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
    values = stats.values.clone() if stats is not None else torch.zeros(4, dtype=torch.float64, device=device)
    for group in groups:
        torch.distributed.all_reduce(values, group=group)
    loss_sum, tokens, infeasible, intermediate_sum = values.tolist()
    metrics = {'ctc loss': loss_sum / max(tokens, 1.0), 'ctc infeasible': int(infeasible)}
    if intermediate:
        metrics['ctc intermediate loss'] = intermediate_sum / max(tokens, 1.0)
    return metrics
