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

Two layouts carry this (``SALM.packed_format``): ``mask``, the ``[b, s]`` rows with the explicit
mask above (the portable spec's default), and ``thd``, Megatron-Core's packed format, which the
Transformer Engine spec needs: the rows become one sequence of ``b x s`` tokens (``[1, b*s]``) cut
by ``PackedSeqParams.cu_seqlens`` (every row's segments, padding tails included), attention and
RoPE restart per segment inside core and TE, and core's MTP layers roll per segment. Hidden states
keep the row layout's number of elements, so pipeline stages exchange the shape the schedule
expects (``thd_stage_input`` / ``thd_stage_output`` reinterpret them).
"""

from typing import NamedTuple

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from ..data.packing import segment_ids

MASK, THD = 'mask', 'thd'


class PackedLayout(NamedTuple):
    """Segments ([b, s] utterance index per position) of a packed microbatch, and the position ids
    that RoPE must read (None where core applies RoPE per segment itself: THD)."""
    segments: torch.Tensor
    position_ids: torch.Tensor | None


def packed_layout(cu_seqlens: torch.Tensor, position_ids: torch.Tensor) -> PackedLayout:
    return PackedLayout(segment_ids(cu_seqlens.to(position_ids.device), position_ids.shape[1]), position_ids)


def thd_layout(cu_seqlens: torch.Tensor, seq_length: int) -> PackedLayout:
    """[1, b*s] segments of the rows laid end to end (row ``r``'s segments offset past the others')."""
    segments = segment_ids(cu_seqlens, seq_length)
    offsets = torch.arange(segments.shape[0], device=segments.device)[:, None] * cu_seqlens.shape[1]
    return PackedLayout((segments + offsets).reshape(1, -1), None)


def thd_packed_seq_params(cu_seqlens: torch.Tensor, seq_length: int, device) -> PackedSeqParams:
    """Core's THD parameters for the rows laid end to end: int32 ``cu_seqlens`` over ``b*s``
    tokens without empty segments, and the longest segment. Read on the host: pass the batch's
    host copy of ``cu_seqlens`` (a device copy would make the host wait for the GPU)."""
    bounds = []
    for r, row in enumerate(cu_seqlens.tolist()):
        bounds.extend(r * seq_length + start for start in sorted(set(row))[:-1])
    bounds.append(cu_seqlens.shape[0] * seq_length)
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    flat = torch.tensor(bounds, dtype=torch.int32).to(device, non_blocking=True)
    return PackedSeqParams(qkv_format=THD, cu_seqlens_q=flat, cu_seqlens_kv=flat,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def thd_stage_input(hidden_states: torch.Tensor) -> torch.Tensor:
    """A later stage's input as received, ``[s', b, h]``, read as the ``[s' * b, 1, h]`` tokens
    the previous stage sent (the same memory: a view, not a transpose)."""
    return hidden_states.reshape(-1, 1, hidden_states.shape[-1])


def thd_stage_output(hidden_states: torch.Tensor, rows: int) -> torch.Tensor:
    """``[t, 1, h]`` hidden states sent on as the ``[t / b, b, h]`` the schedule expects."""
    return hidden_states.reshape(-1, rows, hidden_states.shape[-1])


def thd_block_causal_mask(packed_seq_params: PackedSeqParams, tokens: int) -> torch.Tensor:
    """[1, 1, t, t] mask of one THD sequence (for attention that has no varlen kernel)."""
    cu_seqlens = packed_seq_params.cu_seqlens_q.long()[None]
    return block_causal_mask(segment_ids(cu_seqlens, tokens))


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
