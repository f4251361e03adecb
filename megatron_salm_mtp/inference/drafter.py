"""MTP drafts for self-speculative decoding, conditioned exactly as in training, over KV caches.

Training feeds depth k (1-based) at position i the depth-(k-1) state at i (depth 0: the trunk's
final-norm state h_i) and the embedding of token i+k (audio positions: the placeholder's, see
``model/mtp.py``); its attention sees the depth-k states of positions <= i. Drafting runs the same
layers on the sequence so far, ``x_0 .. x_n`` (x_n emitted, not yet seen by the trunk), whose trunk
states are h_0 .. h_{n-1}: depth k at position n-1 reads token n-1+k and predicts n+k, and
positions past x_n read the drafts of the depths before, d_1 = x_{n+1} .. d_{k-1}, so that the
chain consumes its own drafts as training consumed the true tokens.

Which states a cache may keep: depth k at position i reads tokens up to i+k, so it is final (all
its inputs verified) only for i <= n-k; positions n-k+1 .. n-1 read drafts that the next verify
step may reject. After a step that accepts a drafts, n grows by a+1 <= D+1, so every position
that is not final at some depth lies in the last ``2 D`` positions before the new draft position
(n-1-(D+k) < i for depth k <= D). Each depth therefore keeps a KV cache by position
(``kv_cache.py``) and a draft recomputes, at each depth, the window of the last 2D positions:
everything before it is final and cached, rejected or provisional states inside it are simply
overwritten (the rollback), and the window has the same shape at every step. The first draft
after the prefill computes every position once. Drafts equal those of training's forward over the
whole sequence (``tests/inference_fixtures.py`` keeps that recompute as the reference).
"""

from typing import List

import torch

from ..compat import mcore
from .kv_cache import PositionKVCache, rope_table, rotary_at
from .trunk_cache import head_logits


def mtp_layer_for_depth(language_model, depth: int):
    """The MTP layer that drafts depth ``depth`` (0-based); one shared layer when repeated."""
    shared = language_model.mtp_use_repeated_layer
    return language_model.mtp.layers[0 if shared else depth]


class MTPDrafter:
    """Greedy drafts of ``depths`` tokens per step for ``batch_size`` rows of at most ``capacity``
    positions (the capacity of the rows' token and trunk-state buffers too)."""

    def __init__(self, language_model, batch_size: int, capacity: int, depths: int, device):
        self.lm, self.depths, self.capacity = language_model, depths, capacity
        self.window = 2 * depths
        if capacity < 3 * depths + 1:
            raise ValueError(f"drafting {depths} tokens needs a capacity of at least {3 * depths + 1} "
                             f"positions, got {capacity}")
        self.caches = [PositionKVCache([getattr(mtp_layer_for_depth(language_model, depth),
                                                mcore.MTP_INNER_LAYER).self_attention],
                                       batch_size, capacity, device) for depth in range(depths)]
        self.rope = rope_table(language_model, capacity)
        self.rows = torch.arange(batch_size, device=device)
        self.started = False

    def reset(self) -> None:
        """Start a new batch: its first draft computes every position again."""
        self.started = False

    @torch.no_grad()
    def draft(self, tokens: torch.Tensor, lengths: torch.Tensor, trunk_hidden: torch.Tensor,
              vocab_size: int, longest: int) -> torch.Tensor:
        """[b, depths] drafts of the tokens after each row's last one.

        tokens [b, capacity]: prompt + emitted ids, row r holding ``lengths[r]`` of them;
        trunk_hidden [capacity, b, h]: trunk states by position (final below ``lengths[r] - 1``);
        longest: max(lengths), known on the host (sizes the first draft's window).
        """
        last = lengths - 2  # position n-1: the last with a trunk state
        if self.started:
            starts = (last - (self.window - 1)).clamp(min=0)
            width = self.window
        else:  # nothing cached yet: every position once
            starts, width = torch.zeros_like(last), longest - 1
            self.started = True
        positions = starts[:, None] + torch.arange(width, device=last.device)[None, :]  # [b, w]
        hidden = trunk_hidden[positions.t(), self.rows]  # [w, b, h]
        sequence = tokens.clone()  # drafts are written past each row's tokens as they come
        drafts: List[torch.Tensor] = []
        for depth in range(self.depths):
            # Past a row's last position the window reads and writes garbage that no later
            # query sees (indices clamped into the buffers).
            read = (positions + depth + 1).clamp(max=self.capacity - 1)
            hidden = self._layer_step(depth, hidden, sequence.gather(1, read), positions)
            out = hidden[last - starts, self.rows]  # [b, h]: the state at position n-1
            drafts.append(head_logits(self.lm, out[None], vocab_size)[0].argmax(-1))
            sequence[self.rows, lengths + depth] = drafts[-1]
        return torch.stack(drafts, dim=1)

    def _layer_step(self, depth: int, hidden, token_ids, positions):
        cache = self.caches[depth]
        cache.attend_at(positions)
        with cache.attached():
            return mcore.run_mtp_layer_on_ids(
                mtp_layer_for_depth(self.lm, depth), hidden, token_ids, positions,
                self.lm.embed_mtp_inputs, rotary_at(self.rope, positions))
