"""Each row's decoding state on the device, advanced by the decoding step itself.

A step (greedy: the trunk's next token; speculative: drafts, verify and acceptance) ends by
emitting each active row's tokens into the workspace's buffers, cut after a stop id or at the token
budget, and by counting what the row's statistics need. All of it is arithmetic on fixed shapes:
no host decision inside a step, which is then one CUDA graph replay. The host reads one flag per
step (have all rows finished?) and the outputs and counts once per batch: per-row Python
bookkeeping between steps left the GPU idle (a device read, two copies from the host, and the loops
over rows, each step).
"""

from collections.abc import Sequence

import torch

STEPS, EMITTED = 0, 1
"""Columns of ``RowState.counts``: verify forwards while active, tokens they emitted; then, per
depth, drafts whose prefix was accepted (attempts) and drafts accepted. A draft for a position
after the row's stop id or past its token budget is neither: the trunk's choice there is never
emitted, so it tells nothing of the heads (counted, it read as a rejection at every row's end)."""


class RowState:
    """Finished flags, emitted counts and statistics of ``tokens.shape[0]`` rows whose tokens and
    lengths live in ``tokens`` [b, capacity] and ``lengths`` [b] (the workspace's)."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, depths: int, vocab_rows: int):
        size, device = tokens.shape[0], tokens.device
        self.tokens, self.lengths, self.depths = tokens, lengths, depths
        self.done = torch.zeros(size, dtype=torch.bool, device=device)
        self.all_done = torch.zeros((), dtype=torch.bool, device=device)
        self.emitted = torch.zeros(size, dtype=torch.long, device=device)
        self.emittable = torch.zeros(size, dtype=torch.long, device=device)  # this step's cap
        self.budget = torch.zeros((), dtype=torch.long, device=device)
        self.stop = torch.zeros(vocab_rows, dtype=torch.bool, device=device)  # by token id
        self.counts = torch.zeros(size, 2 + 2 * depths, dtype=torch.long, device=device)
        self.offsets = torch.arange(depths + 1, device=device)

    def start(self, max_new_tokens: int, stop_ids: Sequence[int]) -> None:
        """A new batch (in place: a captured step keeps reading these buffers)."""
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens {max_new_tokens}: must be >= 1')
        bad = [i for i in stop_ids if not 0 <= i < len(self.stop)]
        if bad:
            raise ValueError(f'stop ids {bad} outside the vocabulary (0 .. {len(self.stop) - 1})')
        for state in (self.done, self.all_done, self.emitted, self.emittable, self.counts, self.stop):
            state.zero_()
        self.budget.fill_(max_new_tokens)
        if stop_ids:
            self.stop[torch.tensor(list(stop_ids), device=self.stop.device)] = True

    def emit(self, candidates: torch.Tensor, accepted: torch.Tensor | None = None) -> torch.Tensor:
        """Emit ``candidates`` [b, c] (c <= depths + 1) after each active row's tokens: the first
        1 + accepted[r] of them (all drafts accepted: ``accepted`` None means 0), cut after a stop
        id and at the budget; returns the number emitted per row. The rest are written too, past
        the row's new length, where nothing reads them."""
        width = candidates.shape[1]
        offsets = self.offsets[:width]
        first_stop = torch.where(self.stop[candidates], offsets, width).amin(dim=1)
        self.emittable.copy_(torch.minimum(first_stop + 1, self.budget - self.emitted))
        count = self.emittable.clamp(max=1) if accepted is None else torch.minimum(self.emittable, accepted + 1)
        count = count.masked_fill(self.done, 0)
        slots = (self.lengths[:, None] + offsets).clamp(max=self.tokens.shape[1] - 1)
        self.tokens.scatter_(1, slots, candidates)
        self.lengths.add_(count)
        self.emitted.add_(count)
        self.done.logical_or_((first_stop < count) | (self.emitted >= self.budget))
        self.all_done.copy_(self.done.all())
        return count

    def reorder(self, rows: torch.Tensor) -> None:
        """Row r's state becomes row ``rows[r]``'s (beam search; the tokens and lengths are the
        workspace's to reorder)."""
        for state in (self.done, self.emitted, self.counts):
            state.copy_(state[rows])
        self.all_done.copy_(self.done.all())

    def count_step(self, active: torch.Tensor, count: torch.Tensor,
                   agreed: torch.Tensor | None = None) -> None:
        """Count a verify forward of the ``active`` rows that emitted ``count``; ``agreed`` [b, D]
        is 1 along each row's accepted prefix of drafts. Draft ``i`` guessed the trunk's choice at
        candidate ``i``: it counts where that candidate could be emitted (before the stop id, within
        the budget), as :meth:`emit` of this step measured."""
        self.counts[:, STEPS].add_(active.long())
        self.counts[:, EMITTED].add_(count)
        if agreed is not None:
            agreed = agreed * active[:, None]
            reached = torch.cat([active[:, None].long(), agreed[:, :-1]], dim=1)  # prefix accepted
            emittable = (self.offsets[:self.depths] < self.emittable[:, None]).long()
            agreed, reached = agreed * emittable, reached * emittable
            self.counts[:, 2:2 + self.depths].add_(reached)
            self.counts[:, 2 + self.depths:].add_(agreed)

    def read(self, prompt_lengths: Sequence[int]) -> tuple:
        """(emitted tokens per row, per-row count lists) after the batch: one copy of each."""
        tokens, emitted = self.tokens.cpu(), self.emitted.tolist()
        outputs: list[list[int]] = [tokens[row, start:start + n].tolist()
                                    for row, (start, n) in enumerate(zip(prompt_lengths, emitted))]
        return outputs, self.counts.tolist()
