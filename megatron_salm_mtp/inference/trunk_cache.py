"""The LLM trunk run incrementally over a KV cache by position (``kv_cache.py``), one batch of rows.

Each forward places its queries at per-row positions: the prefill at 0 .. P-1 (prompt padding
included; what lies past a row's prompt is overwritten before any query sees it), every decoding
step at the row's last emitted position and the few after it. RoPE uses those positions, so rows
of different prompt lengths, or accepting different numbers of drafts, need no shared offset.
"""

import torch

from .kv_cache import PositionKVCache, rope_table


class TrunkCache:
    """KV cache of the decoder layers for ``batch_size`` rows of at most ``capacity`` positions."""

    def __init__(self, language_model, batch_size: int, capacity: int, device):
        self.lm = language_model
        attentions = [layer.self_attention for layer in language_model.decoder.layers]
        self.kv = PositionKVCache(attentions, batch_size, capacity, device,
                                  rope_table(language_model, capacity))

    def forward(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run ``embeddings`` [q, b, h] at per-row ``positions`` [b, q] through the decoder, each
        query attending to its row's cached positions up to its own; returns the final-norm
        hidden states [q, b, h]. The cache applies RoPE (``kv_cache.py``)."""
        self.kv.attend_at(positions)
        with self.kv.attached():
            return self.lm.decoder(hidden_states=embeddings, attention_mask=None, rotary_pos_emb=None)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row r's cache becomes row ``rows[r]``'s."""
        self.kv.reorder(rows)

    def next_tokens(self, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Main-head argmax [n, b] of hidden states [n, b, h], within the tokenizer's vocabulary."""
        return head_argmax(self.lm, hidden, vocab_size)


def head_logits(language_model, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits [..., vocab_size] of the (tied or untied) output head over hidden states [..., h],
    cut to the tokenizer's vocabulary (the head's rows may be padded past it)."""
    weight = (language_model.shared_embedding_or_output_weight()
              if language_model.share_embeddings_and_output_weights else None)
    logits, _ = language_model.output_layer(hidden, weight=weight)
    return logits[..., :vocab_size]


def head_argmax(language_model, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Argmax [n, b] of the head's logits of hidden states [n, b, h]. In the logits' own dtype: an
    fp32 copy would give the same ids (it is exact and keeps the order; argmax takes the first of
    equal values either way) for one more kernel and a vocabulary-wide write per head."""
    return head_logits(language_model, hidden, vocab_size).argmax(-1)
