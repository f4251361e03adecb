"""The LLM trunk run incrementally over Megatron-Core's static KV cache, one batch of rows.

Why per-row slots on top of core's context: the static context keeps one write offset for the
whole batch (``sequence_len_offset``), while rows differ in prompt length (audio length varies)
and, under speculative decoding, in how many drafted tokens each verify step accepts. Every
forward therefore appends the same number of *slots* to every row; a row's rejected drafts and
its prompt padding stay in the cache as invalid slots that no later query may attend to (an
explicit key mask), and RoPE uses each row's true token position per slot, not the slot index.
Rolling back a rejected draft is then just marking its slots invalid: no copy, and the layers'
K/V buffers stay core's.

The core attention must honour that mask after the prefill, where core switches the static
context to ``AttnMaskType.no_mask``: the portable spec's SDPA attention does (``loading.py``
builds the model with it); Transformer Engine's would ignore it.
"""

import torch

from ..compat import mcore


class TrunkCache:
    """KV cache + slot bookkeeping for ``batch_size`` rows of at most ``max_slots`` slots."""

    def __init__(self, language_model, batch_size: int, max_slots: int, device):
        self.lm = language_model
        self.context = mcore.static_inference_context(batch_size, max_slots)
        self.valid = torch.zeros(batch_size, max_slots, dtype=torch.bool, device=device)
        self.slot_positions = torch.zeros(max_slots, batch_size, dtype=torch.long, device=device)
        # Positions never exceed slots, so a table of max_slots positions covers every row.
        self.rope_table = language_model.rotary_pos_emb(max_slots)[:, 0, 0, :]  # [max_slots, dim]

    @property
    def used_slots(self) -> int:
        return self.context.sequence_len_offset

    def forward(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run ``embeddings`` [q, b, h] at per-row ``positions`` [b, q] through the decoder,
        appending q slots to every row; returns the final-norm hidden states [q, b, h].

        The first call (empty cache) is the prefill: causal attention over its own slots. Later
        calls attend to every valid earlier slot and causally among their own q slots."""
        queries = embeddings.shape[0]
        start = self.used_slots
        end = start + queries
        if end > self.valid.shape[1]:
            raise RuntimeError(f"KV cache full: {end} slots needed, {self.valid.shape[1]} allocated")
        self.slot_positions[start:end] = positions.t()
        self.valid[:, start:end] = True
        rotary = self.rope_table[self.slot_positions[:end]].unsqueeze(2)  # [end, b, 1, dim]
        mask = None if start == 0 else self._key_mask(start, end)
        hidden = self.lm.decoder(hidden_states=embeddings, attention_mask=mask,
                                 inference_context=self.context, rotary_pos_emb=rotary)
        self.context.sequence_len_offset = end
        self.context.enable_decode_mode()
        return hidden

    def _key_mask(self, start: int, end: int) -> torch.Tensor:
        """[b, 1, q, end], True = masked (Megatron's convention): invalid earlier slots, and new
        slots after the query's own."""
        queries = end - start
        allowed = self.valid[:, None, None, :end].expand(-1, 1, queries, -1).clone()
        causal = torch.ones(queries, queries, dtype=torch.bool, device=allowed.device).tril()
        allowed[..., start:end] &= causal
        return ~allowed

    def keep(self, start: int, kept: torch.Tensor) -> None:
        """Of the slots appended at ``start`` by the last forward, keep the first ``kept[r]`` of
        row r and invalidate the rest (prompt padding, rejected drafts, finished rows)."""
        slots = torch.arange(start, self.used_slots, device=self.valid.device)
        self.valid[:, start:self.used_slots] = (slots - start)[None, :] < kept[:, None]

    def logits(self, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Main-head logits of [..., h] hidden states, cut to the tokenizer's vocabulary."""
        return head_logits(self.lm, hidden, vocab_size)


def head_logits(language_model, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits of the (tied or untied) output head for hidden states [n, b, h] -> [n, b, V]."""
    weight = (language_model.shared_embedding_or_output_weight()
              if language_model.share_embeddings_and_output_weights else None)
    logits, _ = language_model.output_layer(hidden, weight=weight)
    return logits[..., :vocab_size].float()
