"""MTP on speech prompts: which targets each depth supervises, and how its loss is weighted.

Conditioning of audio positions (docs/design.md). At depth k, position i combines
the depth-(k-1) hidden state with the embedding of input token i+k. Inside the audio span that token
is the audio placeholder, and we embed it as such (Megatron-Core's convention: rolled token ids,
re-embedded on the MTP stage) rather than rolling the spliced audio frames. Why:
  * the trunk hidden state h_i that enters every MTP position already carries the audio content;
  * under pipeline parallelism the MTP stage holds token ids and its copy of the word embedding,
    not the first stage's spliced embeddings: no extra activation travels down the pipeline;
  * speculative decoding reproduces it exactly with the embedding table alone (prefill embeds the
    placeholder at audio positions, drafting embeds generated tokens), so training and drafting agree.
``embed_mtp_inputs`` in ``llm.py`` is the one place that implements it; decoding reuses it.

Targets. Depth k at position i predicts token i+k+1 (labels rolled k times). It is supervised only
where the answer-only loss mask, rolled k times, is set, and - with ``mask_placeholder_paths`` - where
none of the tokens it consumes (i+1 .. i+k) is an audio placeholder (Megatron-LM #6770).

Weighting. With ``calculate_per_token_loss`` every gradient is divided by N_main, the global count
of supervised main-head tokens. Depth k's summed CE therefore enters the autograd hook with weight
``lambda / D * N_main / N_k`` so that the objective is ``sum CE / N_main + lambda/D * sum_k sum CE_k / N_k``
whatever the DP size, microbatch count, TP or PP (see ``loss.py``).
"""


import torch

from ..data.packing import segment_ids


def roll_left(tensor: torch.Tensor) -> torch.Tensor:
    """Shift one position to the left along the sequence, zero-filling the end (core's roll)."""
    rolled = torch.roll(tensor, shifts=-1, dims=-1)
    rolled[..., -1] = 0
    return rolled


def mtp_target_masks(loss_mask: torch.Tensor, tokens: torch.Tensor, depths: int,
                     audio_token_id: int, mask_placeholder_paths: bool,
                     segments: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Float masks [b, s], one per depth, of the positions whose depth-k target is supervised.
    ``segments`` ([b, s] utterance index, packed rows): depth k at position i also needs i + k in
    the same utterance, so no target (nor consumed token) comes from the next utterance."""
    masks = []
    mask = loss_mask.float()
    path_ok = torch.ones_like(mask)
    consumed, ahead = tokens, segments
    for _ in range(depths):
        mask = roll_left(mask)
        consumed = roll_left(consumed)
        if mask_placeholder_paths:
            path_ok = path_ok * (consumed != audio_token_id).float()
        if segments is not None:
            ahead = roll_left(ahead)
            path_ok = path_ok * (ahead == segments).float()
        masks.append(mask * path_ok)
    return masks


def batch_segments(batch: dict) -> torch.Tensor | None:
    """[b, s] utterance index per position of a packed microbatch (``cu_seqlens``), else None."""
    cu_seqlens = batch.get('cu_seqlens')
    return None if cu_seqlens is None else segment_ids(cu_seqlens, batch['tokens'].shape[1])


def supervised_counts(microbatches, depths: int, audio_token_id: int,
                      mask_placeholder_paths: bool) -> torch.Tensor:
    """[1 + D] float64 counts of supervised tokens (main head, then each depth) over ``microbatches``."""
    counts = torch.zeros(1 + depths, dtype=torch.float64)
    for batch in microbatches:
        masks = [batch['loss_mask']] + mtp_target_masks(batch['loss_mask'], batch['tokens'], depths,
                                                        audio_token_id, mask_placeholder_paths,
                                                        batch_segments(batch))
        counts += torch.stack([mask.double().sum() for mask in masks])
    return counts


def head_row_counts(loss_mask: torch.Tensor, tokens: torch.Tensor, depths: int, audio_token_id: int,
                    mask_placeholder_paths: bool, segments: torch.Tensor | None = None) -> list[int]:
    """Positions each head computes logits at (main head, then each depth): the nonzero entries of
    its target mask."""
    masks = [loss_mask] + mtp_target_masks(loss_mask, tokens, depths, audio_token_id,
                                           mask_placeholder_paths, segments)
    return [int(torch.count_nonzero(mask)) for mask in masks]


def mtp_loss_weights(global_counts: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """[D] weights of each depth's summed CE so that finalize's 1/N_main yields lambda/D/N_k.

    A depth (or a whole batch) with no supervised token gets weight 0 instead of a NaN.
    """
    depths = global_counts.numel() - 1
    n_main, n_depth = global_counts[0], global_counts[1:]
    weights = scaling_factor / depths * n_main / n_depth.clamp(min=1)
    return torch.where(n_depth > 0, weights, torch.zeros_like(weights)).float()


class MTPStats:
    """Per-depth summed CE, supervised-token count and top-1 hits of one logging window.

    Replaces core's ``MTPLossLoggingHelper``, whose averages of per-microbatch means weight tokens
    unequally and whose ``clean_loss_in_tracker`` raises on stages without MTP.
    """

    def __init__(self, depths: int):
        self.depths = depths
        self.reset()

    def reset(self):
        # On the GPU where there is one: a host copy per depth and microbatch would stall the
        # step (the host waits for the GPU, which then waits for the host's next launches).
        device = torch.cuda.current_device() if torch.cuda.is_available() else 'cpu'
        self.values = torch.zeros(3, self.depths, dtype=torch.float64, device=device)  # loss sum, count, hits

    def add(self, depth: int, loss_sum: torch.Tensor, count: torch.Tensor, hits: torch.Tensor):
        update = torch.stack([loss_sum.detach(), count.detach(), hits.detach()])
        self.values[:, depth] += update.to(self.values)

    def reduce(self, group=None) -> dict:
        """All-reduce over ``group`` (the DP group) and return {'mtp_k loss', 'mtp_k acc'}."""
        values = self.values.clone()
        if group is not None:
            torch.distributed.all_reduce(values, group=group)
        loss_sum, count, hits = values.cpu()
        out = {}
        for k in range(self.depths):
            n = max(count[k].item(), 1.0)
            out[f'mtp_{k + 1} loss'] = loss_sum[k].item() / n
            out[f'mtp_{k + 1} acc'] = hits[k].item() / n
        return out
