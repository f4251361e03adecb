"""Keys and values stored by token position, row by row: the KV cache of the trunk and the MTP layers.

Row r's token at position p keeps its (rotated) keys and values in slot p of row r. A forward
writes the keys of its q queries at their own positions, each row at its own, and every query
attends over the whole buffer through a mask that shows a query at position p the slots 0 .. p.
What follows from that:

* rollback is free: rejected drafts (and prompt padding) lie beyond a row's length, and the
  forward that first puts a query at position p writes slot p itself, before any query can see it;
* every decoding step has the same shapes (q queries over ``capacity`` keys) whatever the rows'
  lengths, and a position's keys always sit in the same slot: the logits of a token do not depend
  on the forward it was computed in (``decode.py`` builds exact speculative decoding on this), and
  a step can be replayed from a CUDA graph.

Why not Megatron-Core's ``StaticInferenceContext``: it writes all rows at one shared offset and
attends over a prefix that grows by each step's width, so rows accepting different numbers of
drafts need invalid-slot bookkeeping, a token's keys land in different slots (over different key
lengths) under greedy and speculative decoding - they round differently in bf16 - and the shapes
change every step. Core's attention module still does everything else (QKV, QK-norm, output
projection, as in training): a forward pre-hook on its core attention swaps the new keys and values
for the cache's and the causal flag for the position mask.

Per forward, not per layer. A decoding step of a small model is bound by its number of kernels, so
what every layer would recompute from the positions alone is computed once per forward and shared
by the layers (and by the MTP depths of a draft): the mask, additive (0 or -inf in the
activations' dtype: what SDPA turns a boolean mask into, so a boolean one costs every layer a
negation and a conversion), and RoPE's cos and sin. The hook applies RoPE itself (the forwards pass
core no rotary embedding): core's unfused RoPE computes cos and sin of the angles for the queries
and again for the keys of every layer, 12 of its ~40 kernels; ``rotated`` is the rest of its
arithmetic, op for op, so the values are the same.
"""

from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import torch
from megatron.core.transformer.enums import AttnMaskType

from ..model.specs import SDPAttention


class PositionKVCache:
    """K/V buffers ``[capacity, b, groups, dim]`` by position for ``attentions`` (core
    ``SelfAttention`` modules), one batch of ``batch_size`` rows."""

    def __init__(self, attentions: Sequence[torch.nn.Module], batch_size: int, capacity: int, device,
                 rope: torch.Tensor | None = None):
        for attention in attentions:
            if not isinstance(attention.core_attention, SDPAttention):
                raise TypeError(f"decoding needs the local spec's SDPA core attention (it honours "
                                f"the cache's mask), got {type(attention.core_attention).__name__}")
        self.attentions = list(attentions)
        self.capacity = capacity
        self.slots = torch.arange(capacity, device=device)
        self.rows = torch.arange(batch_size, device=device)
        dtype = next(attentions[0].parameters()).dtype  # the queries' dtype
        self.dtype, self.rope = dtype, rope  # rope: [capacity, dim] angles by position (``rope_table``)
        self.shown, self.hidden = (torch.tensor(value, dtype=dtype, device=device)
                                   for value in (0.0, float('-inf')))
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.write_index = self.mask = self.cos = self.sin = None

    def attend_at(self, positions: torch.Tensor) -> None:
        """Place the next forward's queries at ``positions`` [b, q] (each row its own)."""
        self.write_index = positions.t()  # [q, b], as the keys are laid out
        later = self.slots[None, None, None, :] > positions[:, None, :, None]  # [b, 1, q, capacity]
        self.mask = torch.where(later, self.hidden, self.shown)
        if self.rope is not None:
            angles = self.rope[self.write_index].unsqueeze(2)  # [q, b, 1, dim], core's layout
            self.cos, self.sin = (torch.cos(angles).to(self.dtype), torch.sin(angles).to(self.dtype))

    def attend_as(self, other: 'PositionKVCache') -> None:
        """Place the next forward's queries where ``other``'s are (its mask and rotations)."""
        self.write_index, self.mask, self.cos, self.sin = other.write_index, other.mask, other.cos, other.sin

    @contextmanager
    def attached(self):
        """Route the core attention of ``attentions`` through this cache for the ``with`` body."""
        handles = [attention.core_attention.register_forward_pre_hook(
            partial(self._attend, index), with_kwargs=True)
            for index, attention in enumerate(self.attentions)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _attend(self, index: int, module, args, kwargs):
        query, key, value = args[:3]
        if self.cos is not None:
            query, key = rotated(query, self.cos, self.sin), rotated(key, self.cos, self.sin)
        keys, values = self._buffers(index, key, value)
        keys[self.write_index, self.rows] = key
        values[self.write_index, self.rows] = value
        return (query, keys, values, self.mask), dict(kwargs, attn_mask_type=AttnMaskType.no_mask)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row r's keys and values become those of row ``rows[r]`` (beam search), in place."""
        for keys, values in self.buffers.values():
            keys.copy_(keys[:, rows])
            values.copy_(values[:, rows])

    def _buffers(self, index: int, key: torch.Tensor, value: torch.Tensor):
        if index not in self.buffers:
            # Zeros, not empty memory: a hidden slot's value is multiplied by an attention weight
            # of exactly 0, which a NaN left in uninitialised memory would turn into NaN.
            self.buffers[index] = tuple(t.new_zeros((self.capacity,) + tuple(t.shape[1:]))
                                        for t in (key, value))
        return self.buffers[index]


def rope_table(language_model, capacity: int) -> torch.Tensor | None:
    """[capacity, dim] rotary angles by position, or None for a model without RoPE; only the RoPE
    that ``rotated`` reproduces (core's unfused, non-interleaved, unscaled)."""
    if language_model.position_embedding_type != 'rope':
        return None
    config = language_model.config
    for name in ('rotary_interleaved', 'multi_latent_attention', 'apply_rope_fusion'):
        if getattr(config, name, False):
            raise ValueError(f'decoding applies RoPE itself and does not support {name}=True')
    if getattr(config, 'yarn_rotary_scaling_factor', None) is not None:
        raise ValueError('decoding applies RoPE itself and does not support YaRN scaling')
    return language_model.rotary_pos_emb(capacity)[:, 0, 0, :]


def rotated(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Core's unfused RoPE (``rope_utils._apply_rotary_pos_emb_bshd``, non-interleaved, mscale 1)
    of ``t`` [q, b, heads, dim], given cos and sin [q, b, 1, rotary dim] in ``t``'s dtype."""
    dim = cos.shape[-1]
    t, rest = t[..., :dim], t[..., dim:]
    first, second = torch.chunk(t, 2, dim=-1)
    t = (t * cos) + (torch.cat((-second, first), dim=-1) * sin)
    return t if rest.shape[-1] == 0 else torch.cat((t, rest), dim=-1)
