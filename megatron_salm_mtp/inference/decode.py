"""Batched greedy and MTP self-speculative decoding of the SALM over the trunk's KV cache.

Both loops share the prefill (audio encoded once and spliced into the prompt embedding by
``SALM.embed_inputs``) and the per-row bookkeeping of ``DecodeRows``. Greedy feeds each row's last
token; speculative decoding feeds it plus D drafts (``drafter.py``), takes the trunk's argmax at
each of the D+1 positions, accepts the longest prefix of drafts that the trunk agrees with plus
the trunk's own next token, and invalidates the cache slots of the rejected drafts. Every emitted
token is a trunk argmax given the emitted prefix, hence the output equals greedy decoding (up to
floating-point differences between a 1-query and a (D+1)-query forward, which can flip a
near-tie in bf16).

Rows accept different numbers of tokens per step; the cache keeps per-row slots
(``trunk_cache.py``), so no row waits for another. Finished rows ride along until the batch ends,
their slots invalidated and their outputs ignored.
"""

from dataclasses import dataclass, field
from typing import List, Sequence

import torch

from .drafter import draft_tokens
from .trunk_cache import TrunkCache


@dataclass
class PromptBatch:
    """Right-padded prompts (placeholders included) and the audio their placeholders stand for."""
    tokens: torch.Tensor  # [b, P] long
    lengths: torch.Tensor  # [b] prompt lengths
    audio_features: torch.Tensor  # [n_audio, mels, T]
    audio_feature_lengths: torch.Tensor  # [n_audio]


@dataclass
class DecodeStats:
    """Counts of one row (or, merged, of many); ``report.py`` turns them into rates."""
    depths: int = 0
    verify_steps: int = 0  # trunk forwards after the prefill while the row was active
    verify_emitted: int = 0  # tokens those forwards emitted (after EOS / budget cuts)
    draft_attempts: List[int] = field(default_factory=list)  # per depth: drafts whose prefix was accepted
    draft_accepts: List[int] = field(default_factory=list)  # per depth: drafts accepted

    def __post_init__(self):
        self.draft_attempts = self.draft_attempts or [0] * self.depths
        self.draft_accepts = self.draft_accepts or [0] * self.depths

    def merge(self, other: 'DecodeStats') -> None:
        self.verify_steps += other.verify_steps
        self.verify_emitted += other.verify_emitted
        for k in range(self.depths):
            self.draft_attempts[k] += other.draft_attempts[k]
            self.draft_accepts[k] += other.draft_accepts[k]


class DecodeRows:
    """Per-row sequences (prompt + emitted), lengths, trunk hidden states by position, outputs.

    Lengths and finished flags are kept on the host as well: the loops read them every step, and
    a device read per row would stall the GPU's queue of kernels each time."""

    def __init__(self, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                 hidden_size: int, dtype: torch.dtype, lookahead: int):
        size, prompt = batch.tokens.shape
        device = batch.tokens.device
        capacity = prompt + max_new_tokens + lookahead + 1
        self.tokens = torch.zeros(size, capacity, dtype=torch.long, device=device)
        self.tokens[:, :prompt] = batch.tokens
        self.host_lengths = batch.lengths.tolist()
        self.lengths = batch.lengths.clone().to(device)
        self.hidden = torch.zeros(capacity, size, hidden_size, dtype=dtype, device=device)
        self.max_new_tokens, self.stop_ids = max_new_tokens, set(stop_ids)
        self.outputs: List[List[int]] = [[] for _ in range(size)]
        self.done = torch.zeros(size, dtype=torch.bool)  # host
        self.index = torch.arange(size, device=device)

    def active_on(self, device) -> torch.Tensor:
        return (~self.done).to(device)

    def last_tokens(self) -> torch.Tensor:
        return self.tokens[self.index, self.lengths - 1]

    def store_hidden(self, positions: torch.Tensor, hidden: torch.Tensor) -> None:
        """Trunk states [q, b, h] of the tokens at ``positions`` [b, q]."""
        self.hidden[positions.t(), self.index[None, :]] = hidden

    def append(self, candidates: torch.Tensor, counts: torch.Tensor) -> List[int]:
        """Emit the first ``counts[r]`` of ``candidates[r]`` for each active row, cut after a stop
        id or at the token budget; returns the number emitted per row."""
        emitted, rows, columns, values = [], [], [], []
        for row, (tokens, count) in enumerate(zip(candidates.tolist(), counts.tolist())):
            taken = []
            for token in tokens[:count] if not self.done[row] else []:
                taken.append(token)
                if token in self.stop_ids or len(self.outputs[row]) + len(taken) >= self.max_new_tokens:
                    self.done[row] = True
                    break
            start = self.host_lengths[row]
            rows += [row] * len(taken)
            columns += range(start, start + len(taken))
            values += taken
            self.host_lengths[row] += len(taken)
            self.outputs[row].extend(taken)
            emitted.append(len(taken))
        device = self.tokens.device
        self.tokens[torch.tensor(rows, dtype=torch.long, device=device),
                    torch.tensor(columns, dtype=torch.long, device=device)] = torch.tensor(
                        values, dtype=torch.long, device=device)
        self.lengths = torch.tensor(self.host_lengths, device=device)
        return emitted


def _prefill(model, cache: TrunkCache, batch: PromptBatch, rows: DecodeRows, vocab_size: int):
    size, prompt = batch.tokens.shape
    positions = torch.arange(prompt, device=batch.tokens.device)[None].expand(size, prompt)
    embeddings = model.embed_inputs(batch.tokens, positions, batch.audio_features,
                                    batch.audio_feature_lengths)
    hidden = cache.forward(embeddings, positions)
    cache.keep(0, rows.lengths)  # padding after each prompt
    rows.store_hidden(positions, hidden)
    last = hidden[rows.lengths - 1, rows.index]
    first = cache.logits(last[None], vocab_size)[0].argmax(-1)
    rows.append(first[:, None], torch.ones_like(first))


def _feed(model, cache: TrunkCache, rows: DecodeRows, ids: torch.Tensor):
    """Trunk forward of ``ids`` [b, q] placed after each row's emitted tokens (the first is the
    row's last emitted token); returns (hidden [q, b, h], the first of its cache slots)."""
    offsets = torch.arange(ids.shape[1], device=ids.device)
    positions = (rows.lengths - 1)[:, None] + offsets[None, :]
    embeddings = model.language_model.embedding(input_ids=ids, position_ids=positions)
    start = cache.used_slots
    hidden = cache.forward(embeddings, positions)
    rows.store_hidden(positions, hidden)
    return hidden, start


def _new_cache(model, batch: PromptBatch, max_new_tokens: int, tokens_per_step: int) -> TrunkCache:
    slots = batch.tokens.shape[1] + max_new_tokens * tokens_per_step
    return TrunkCache(model.language_model, batch.tokens.shape[0], slots, batch.tokens.device)


def _new_rows(model, batch, max_new_tokens, stop_ids, lookahead) -> DecodeRows:
    weight = model.language_model.embedding.word_embeddings.weight
    return DecodeRows(batch, max_new_tokens, stop_ids, weight.shape[1], weight.dtype, lookahead)


@torch.no_grad()
def greedy_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                  vocab_size: int):
    """(outputs per row, DecodeStats per row) of KV-cached greedy decoding."""
    cache = _new_cache(model, batch, max_new_tokens, 1)
    rows = _new_rows(model, batch, max_new_tokens, stop_ids, lookahead=0)
    stats = [DecodeStats() for _ in range(batch.tokens.shape[0])]
    _prefill(model, cache, batch, rows, vocab_size)
    while not bool(rows.done.all()):
        active = ~rows.done
        hidden, start = _feed(model, cache, rows, rows.last_tokens()[:, None])
        cache.keep(start, rows.active_on(hidden.device).long())
        emitted = rows.append(cache.logits(hidden, vocab_size)[0].argmax(-1)[:, None],
                              torch.ones_like(rows.lengths))
        for row in active.nonzero()[:, 0].tolist():
            stats[row].verify_steps += 1
            stats[row].verify_emitted += emitted[row]
    return rows.outputs, stats


@torch.no_grad()
def speculative_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                       vocab_size: int, depths: int):
    """(outputs per row, DecodeStats per row) of self-speculative decoding with ``depths`` MTP drafts."""
    cache = _new_cache(model, batch, max_new_tokens, depths + 1)
    rows = _new_rows(model, batch, max_new_tokens, stop_ids, lookahead=depths)
    stats = [DecodeStats(depths) for _ in range(batch.tokens.shape[0])]
    _prefill(model, cache, batch, rows, vocab_size)
    lm = model.language_model
    while not bool(rows.done.all()):
        active = ~rows.done
        drafts = draft_tokens(lm, rows.tokens, rows.lengths, rows.hidden, depths, vocab_size)
        ids = torch.cat([rows.last_tokens()[:, None], drafts], dim=1)
        hidden, start = _feed(model, cache, rows, ids)
        verdict = cache.logits(hidden, vocab_size).argmax(-1).t()  # [b, D+1]: trunk's choices
        agreed = (drafts == verdict[:, :depths]).long().cumprod(dim=1)  # accepted prefix
        accepted = agreed.sum(dim=1)
        cache.keep(start, (accepted + 1) * rows.active_on(accepted.device))
        emitted = rows.append(verdict, accepted + 1)  # drafts 1..a equal verdict 0..a-1
        agreed = agreed.tolist()
        for row in active.nonzero()[:, 0].tolist():
            record_step(stats[row], agreed[row], emitted[row])
    return rows.outputs, stats


def record_step(stats: DecodeStats, agreed: List[int], emitted: int) -> None:
    """Count one verify forward of an active row: ``agreed`` is 1 along the row's accepted
    prefix of drafts (depth by depth), ``emitted`` the tokens the step emitted."""
    stats.verify_steps += 1
    stats.verify_emitted += emitted
    reached = 1
    for depth, accepted in enumerate(agreed):
        stats.draft_attempts[depth] += reached
        stats.draft_accepts[depth] += accepted
        reached = accepted
