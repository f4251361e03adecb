"""MTP drafts for self-speculative decoding, conditioned exactly as in training.

At depth k, training feeds position i the depth-(k-1) hidden state and the embedding of token
i+k, obtained by core's MTP layer rolling the token ids and re-embedding them with
``SpeechGPTModel.embed_mtp_inputs`` (audio positions see the placeholder embedding: see
``model/mtp.py``). Drafting runs the very same layers on the sequence decoded so far, ``[x_0 ..
x_n]`` (prompt with its placeholders, then the emitted tokens; x_n not yet seen by the trunk), with
the trunk's hidden states h_0 .. h_{n-1}. Position n-1 is the last with a trunk state: depth 1
there reads x_n and predicts x_{n+1}; before depth k+1, the rolled id that position n-1 will read
is replaced by the depth-k draft, so the chain consumes its own drafts as training consumed the
true tokens.

The MTP layers keep no KV cache; they recompute over the whole sequence at every draft. Why:
a depth-k state at position i reads token i+k, which near the end is a draft that the next verify
step may reject, so a cache would need its own per-depth rollback; the recompute is exact (it is
training's forward), and costs D layers over a few hundred positions against the trunk's L layers
per verify step.
"""

from typing import List

import torch

from ..compat import mcore
from .trunk_cache import head_logits


def mtp_layer_for_depth(language_model, depth: int):
    """The MTP layer that drafts depth ``depth`` (0-based); one shared layer when repeated."""
    shared = language_model.mtp_use_repeated_layer
    return language_model.mtp.layers[0 if shared else depth]


@torch.no_grad()
def draft_tokens(language_model, tokens: torch.Tensor, lengths: torch.Tensor,
                 trunk_hidden: torch.Tensor, depths: int, vocab_size: int) -> torch.Tensor:
    """[b, depths] greedy drafts of the tokens after each row's last one.

    tokens [b, >= max(lengths)]: prompt + emitted ids, row r holding ``lengths[r]`` of them;
    trunk_hidden [>= max(lengths), b, h]: trunk final-norm states by position (valid below
    ``lengths[r] - 1``; what lies beyond is never attended to, attention being causal).
    """
    span = int(lengths.max())
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    last_state = lengths - 2  # position n-1 of each row
    input_ids = tokens[:, :span].clone()
    position_ids = torch.arange(span, device=tokens.device)[None].expand_as(input_ids)
    hidden = trunk_hidden[:span]
    rotary = language_model.rotary_pos_emb(span)
    drafts: List[torch.Tensor] = []
    for depth in range(depths):
        hidden, input_ids, position_ids = mcore.run_mtp_layer(
            mtp_layer_for_depth(language_model, depth), input_ids=input_ids,
            position_ids=position_ids, hidden_states=hidden, attention_mask=None,
            rotary_pos_emb=rotary, embedding=language_model.embed_mtp_inputs)
        logits = head_logits(language_model, hidden[last_state, rows][None], vocab_size)[0]
        drafts.append(logits.argmax(-1))
        input_ids = input_ids.clone()
        input_ids[rows, last_state + 1] = drafts[-1]  # what position n-1 reads at the next depth
    return torch.stack(drafts, dim=1)
