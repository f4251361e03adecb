"""MTP drafts for self-speculative decoding, conditioned exactly as in training, over KV caches.

Training feeds depth k (1-based) at position i the depth-(k-1) state at i (depth 0: the trunk's
final-norm state h_i) and the embedding of token i+k (audio positions: the placeholder's, see
``model/mtp.py``); its attention sees the depth-k states of positions <= i. Drafting runs the same
layers on the sequence so far, ``x_0 .. x_n`` (x_n emitted, not yet seen by the trunk), whose trunk
states are h_0 .. h_{n-1}: depth k at position n-1 reads token n-1+k and predicts n+k, and
positions past x_n read the drafts of the depths before, d_1 = x_{n+1} .. d_{k-1}, so that the
chain consumes its own drafts as training consumed the true tokens.

Which states a cache may keep. The depth-k state at i depends on h_0 .. h_i and the tokens up to
i+k, nothing else. A draft at n computes every depth at positions up to n-1, those past n-k from
its own drafts. The verify step then accepts a of the D drafts (x_{n+1} .. x_{n+a} are the drafts)
and emits one more token, so the next draft is at n' = n+a+1; every state of the cache at i <= n-1
whose tokens are all verified, i+k <= n+a, is final, and depth k must compute the positions from
min(n, n+a-k+1) to n'-1: max(a+1, k) <= D+1 of them. Each depth therefore keeps a KV cache by
position (``kv_cache.py``) and a draft computes, at every depth, the window of the last D+1
positions: what lies before it is final and cached, provisional states inside it are simply
overwritten (the rollback), and the window has the same shape at every step (one CUDA graph).
Fewer is impossible for this conditioning: depth k's own state at n-k+1 .. n-1 reads this step's
drafts d_1 .. d_{k-1}, so k positions per depth are new at every step even when all drafts were
accepted. After the prefill, ``prefill`` computes every depth over the prompt once.
Drafts equal those of training's forward over the whole sequence (``tests/support/inference_fixtures.py``
keeps that recompute as the reference).
"""


import torch

from ..compat import mcore
from .kv_cache import PositionKVCache, rope_table
from .trunk_cache import head_argmax


def mtp_layer_for_depth(language_model, depth: int):
    """The MTP layer that drafts depth ``depth`` (0-based); one shared layer when repeated."""
    shared = language_model.mtp_use_repeated_layer
    return language_model.mtp.layers[0 if shared else depth]


class MTPDrafter:
    """Greedy drafts of ``depths`` tokens per step for ``batch_size`` rows of at most ``capacity``
    positions (the capacity of the rows' token and trunk-state buffers too)."""

    def __init__(self, language_model, batch_size: int, capacity: int, depths: int, device):
        self.lm, self.depths, self.capacity = language_model, depths, capacity
        if capacity < 3 * depths + 1:
            raise ValueError(f'drafting {depths} tokens needs a capacity of at least {3 * depths + 1} '
                             f'positions, got {capacity}')
        rope = rope_table(language_model, capacity)
        self.caches = [PositionKVCache([getattr(mtp_layer_for_depth(language_model, depth),
                                                mcore.MTP_INNER_LAYER).self_attention],
                                       batch_size, capacity, device, rope) for depth in range(depths)]
        self.rows = torch.arange(batch_size, device=device)
        self.window = torch.arange(depths + 1, device=device)  # offsets of the D+1 positions

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, trunk_hidden: torch.Tensor, longest: int) -> None:
        """Every depth's states at positions 0 .. longest-2 (the first draft's window and what lies
        before it), after the trunk's prefill and first token; ``longest``: max(lengths). Past a
        row's own window the states read junk, overwritten before any query sees them."""
        positions = torch.arange(longest - 1, device=tokens.device)[None].expand(len(self.rows), -1)
        hidden = trunk_hidden[:longest - 1]
        for _ in self._depth_states(tokens, positions, hidden):
            pass  # the caches are what the prefill leaves

    @torch.no_grad()
    def draft(self, tokens: torch.Tensor, lengths: torch.Tensor, trunk_hidden: torch.Tensor,
              vocab_size: int) -> torch.Tensor:
        """[b, depths] drafts of the tokens after each row's last one.

        tokens [b, capacity]: prompt + emitted ids, row r holding ``lengths[r]`` of them;
        trunk_hidden [capacity, b, h]: trunk states by position (final below ``lengths[r] - 1``).
        """
        last = lengths - 2  # position n-1: the last with a trunk state
        starts = (last - self.depths).clamp(min=0)
        by_position = self.window[:, None] + starts[None, :]  # [D+1, b], as the states are laid out
        at_last = last - starts  # where position n-1 lies in the window
        sequence = tokens.clone()  # drafts are written past each row's tokens as they come
        drafts: list[torch.Tensor] = []
        window_hidden = trunk_hidden[by_position, self.rows]  # contiguous (a transposed index would not be)
        for depth, hidden in self._depth_states(sequence, by_position.t(), window_hidden):
            drafts.append(head_argmax(self.lm, hidden[at_last, self.rows][None], vocab_size)[0])
            sequence[self.rows, lengths + depth] = drafts[-1]
        return torch.stack(drafts, dim=1)

    def _depth_states(self, sequence, positions, hidden):
        """Yields (depth, states [q, b, h] at ``positions`` [b, q]) depth after depth, reading each
        depth's tokens from ``sequence`` when it comes (a draft written in between is read)."""
        self.caches[0].attend_at(positions)  # mask and RoPE, shared by the depths
        for cache in self.caches[1:]:
            cache.attend_as(self.caches[0])
        for depth, cache in enumerate(self.caches):
            # Past a row's last position the window reads and writes junk that no later query
            # sees (indices clamped into the buffers).
            read = (positions + depth + 1).clamp(max=self.capacity - 1)
            with cache.attached():
                hidden = mcore.run_mtp_layer_on_ids(
                    mtp_layer_for_depth(self.lm, depth), hidden, sequence.gather(1, read), positions,
                    self.lm.embed_mtp_inputs, None)  # the cache applies RoPE
            yield depth, hidden
