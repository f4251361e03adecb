"""Packed rows (``--pack-sequences``) in the model: what keeps each utterance of a row to itself.

A packed microbatch keeps the padded layout, ``[b, s]`` with fixed shapes (what pipeline stages
exchange), and adds per-row utterance starts, ``cu_seqlens`` (``data/packing.py``). From them:

* attention: a block-diagonal causal mask, so a position sees only earlier positions of its own
  utterance (the portable spec's SDPA attention takes it as an explicit mask);
* RoPE: the rotary angles of each position's own ``position_ids`` (restarting per utterance)
  instead of its column index;
* MTP: depth ``k`` at position ``i`` is supervised only where ``i + k`` lies in the same utterance
  (``mtp.mtp_target_masks``). The depth-k input at the last ``k`` positions of an utterance is a
  token of the next one (Megatron-Core's roll runs along the row), but those positions are
  unsupervised and, the mask being causal per utterance, no supervised position attends to them:
  losses and gradients are those of the same utterances in separate rows.

The audio splice needs nothing: features come in row-major order of the placeholder runs.
"""

from typing import NamedTuple

import torch

from ..data.packing import segment_ids


class PackedLayout(NamedTuple):
    """Segments ([b, s] utterance index per position) and position ids of a packed microbatch."""
    segments: torch.Tensor
    position_ids: torch.Tensor


def packed_layout(cu_seqlens: torch.Tensor, position_ids: torch.Tensor) -> PackedLayout:
    return PackedLayout(segment_ids(cu_seqlens.to(position_ids.device), position_ids.shape[1]), position_ids)


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where attention is masked out (Megatron's convention): key ``j`` is
    visible from query ``i`` only if ``j <= i`` and both lie in the same segment."""
    seq = segments.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return ~(same & causal)[:, None]


def per_position_rotary(rotary_pos_emb: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Core's rotary angles ``[S, 1, 1, d]`` (column ``p`` holds position ``p``) -> ``[s, b, 1, d]``
    holding each token's own position; the unfused RoPE broadcasts it over heads."""
    return rotary_pos_emb[:, 0].index_select(0, position_ids.t().reshape(-1)).view(
        position_ids.shape[1], position_ids.shape[0], 1, rotary_pos_emb.shape[-1])
