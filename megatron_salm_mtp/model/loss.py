"""The loss function handed to Megatron-Core's schedules.

With ``calculate_per_token_loss`` the schedule neither averages over microbatches nor DDP over
data-parallel ranks; ``finalize_model_grads`` divides every gradient by the global count of
supervised tokens that this function reports. The gradient of one global batch is then that of
``sum CE / N_main`` however the batch is split; the MTP term follows from ``mtp.mtp_loss_weights``.
With ``--training-mode encoder_ctc`` the CTC loss is the whole objective and its target ids are
the count: ``sum CTC / N_ctc``.
"""

import torch


def masked_token_loss(loss_mask: torch.Tensor, token_loss: torch.Tensor):
    """(summed CE, supervised-token count, report) for one microbatch; token_loss is [b, s]."""
    mask = loss_mask.to(token_loss.device).float()
    loss_sum = (token_loss.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, num_tokens, {'lm loss': report}


def summed_ctc_loss(num_targets: int, loss_sum: torch.Tensor):
    """(summed CTC, its target-id count, report) for one microbatch of ``--training-mode
    encoder_ctc``; the count comes from the host (``ctc.CTCLengths``)."""
    count = torch.tensor(num_targets, dtype=torch.int, device=loss_sum.device)
    report = torch.stack([loss_sum.detach().float(), count.float()])
    return loss_sum, count, {'ctc loss': report}
