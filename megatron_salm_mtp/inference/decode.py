"""Batched greedy and MTP self-speculative decoding of the SALM over the trunk's KV cache.

Both loops share the prefill (audio encoded once and spliced into the prompt embedding by
``SALM.embed_inputs``) and the per-row bookkeeping of ``DecodeRows``. Greedy feeds each row's last
token; speculative decoding feeds it plus D drafts (``drafter.py``), takes the trunk's argmax at
each of the D+1 positions and accepts the longest prefix of drafts that the trunk agrees with plus
the trunk's own next token. Rejected drafts need no rollback: the cache is kept by position
(``kv_cache.py``) and the next step overwrites them.

Exact, in bf16 too. Every emitted token is a trunk argmax given the emitted prefix, so the output
equals greedy decoding in exact arithmetic; in floating point it must also be computed the same
way, or a near-tie flips (in bf16 it did, in a few utterances per hundred, when greedy ran a
one-token forward over a differently laid-out cache and the verify step a (D+1)-token one). ``greedy_decode(width=D+1)`` therefore
runs every step at the verify step's shapes: the last token plus D fillers, logits at all D+1
positions. A token at position p then comes out of the very same computation in both loops: the
same kernels at the same shapes (GEMMs of (D+1) x b rows, attention of D+1 queries over the same
number of cached keys), a query at p sees slots 0..p holding the same values (by induction; later
slots, fillers or rejected drafts, get an attention weight of exactly 0), and a row of a GEMM or a
query of the attention does not round differently for sitting at another index. Cost: on a GPU a
step of a small batch reads the weights once whatever its width, so D+1 positions cost about what
one does (the benchmark reports both); on a CPU greedy at width 1 stays the cheaper reference.
Re-deciding near-ties with a one-token forward instead would not be exact: greedy's own state
(its cached keys) comes from one-token forwards that speculative decoding never runs.

Rows accept different numbers of tokens per step; each row has its own positions in the cache, so
no row waits for another. Finished rows ride along until the batch ends, their outputs ignored.
The steps after the prefill run over a ``workspace.py`` workspace, replayed from CUDA graphs when
its pool asks for them.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from .timing import PhaseClock
from .workspace import DecodeWorkspace, WorkspacePool

CAPACITY_BUCKET = 64
"""Buffer capacities are rounded up to a multiple of this: batches of one size then share a few
workspaces (and CUDA graphs) whatever their prompt lengths."""


@dataclass
class PromptBatch:
    """Right-padded prompts (placeholders included) and the audio their placeholders stand for."""
    tokens: torch.Tensor  # [b, P] long
    lengths: torch.Tensor  # [b] prompt lengths
    audio_features: torch.Tensor  # [n_audio, mels, T]
    audio_feature_lengths: torch.Tensor  # [n_audio]


@dataclass
class DecodeStats:
    """Counts of one row (or, merged, of many); ``report.py`` turns them into rates.

    The seconds are the batch's, set on its first row only, so that sums over rows count each
    batch once; decoding time less both is the time of the steps after the prefill."""
    depths: int = 0
    verify_steps: int = 0  # trunk forwards after the prefill while the row was active
    verify_emitted: int = 0  # tokens those forwards emitted (after EOS / budget cuts)
    draft_attempts: List[int] = field(default_factory=list)  # per depth: drafts whose prefix was accepted
    draft_accepts: List[int] = field(default_factory=list)  # per depth: drafts accepted
    encode_seconds: float = 0.0  # audio encoding and projection, spliced into the prompt
    prefill_seconds: float = 0.0  # the trunk over the prompt, to the first token

    def __post_init__(self):
        self.draft_attempts = self.draft_attempts or [0] * self.depths
        self.draft_accepts = self.draft_accepts or [0] * self.depths

    def merge(self, other: 'DecodeStats') -> None:
        self.verify_steps += other.verify_steps
        self.verify_emitted += other.verify_emitted
        self.encode_seconds += other.encode_seconds
        self.prefill_seconds += other.prefill_seconds
        for k in range(self.depths):
            self.draft_attempts[k] += other.draft_attempts[k]
            self.draft_accepts[k] += other.draft_accepts[k]


class DecodeRows:
    """Host side of a batch: outputs, finished flags and lengths per row, mirrored into the
    workspace's token and length buffers as tokens are emitted.

    Lengths and finished flags are kept on the host: the loops read them every step, and a
    device read per row would stall the GPU's queue of kernels each time."""

    def __init__(self, workspace: DecodeWorkspace, batch: PromptBatch, max_new_tokens: int,
                 stop_ids: Sequence[int]):
        self.ws = workspace
        workspace.load(batch.tokens, batch.lengths)
        size = batch.tokens.shape[0]
        self.host_lengths = batch.lengths.tolist()
        self.max_new_tokens, self.stop_ids = max_new_tokens, set(stop_ids)
        self.outputs: List[List[int]] = [[] for _ in range(size)]
        self.done = torch.zeros(size, dtype=torch.bool)

    def append(self, candidates: List[List[int]], counts: List[int]) -> List[int]:
        """Emit the first ``counts[r]`` of ``candidates[r]`` for each active row, cut after a stop
        id or at the token budget; returns the number emitted per row. Host lists: the caller
        reads the step's outputs from the device in one go."""
        emitted, update = [], [[], [], []]  # rows, positions, tokens written to the workspace
        for row, (tokens, count) in enumerate(zip(candidates, counts)):
            taken = []
            for token in tokens[:count] if not self.done[row] else []:
                taken.append(token)
                if token in self.stop_ids or len(self.outputs[row]) + len(taken) >= self.max_new_tokens:
                    self.done[row] = True
                    break
            start = self.host_lengths[row]
            update[0] += [row] * len(taken)
            update[1] += range(start, start + len(taken))
            update[2] += taken
            self.host_lengths[row] += len(taken)
            self.outputs[row].extend(taken)
            emitted.append(len(taken))
        rows, positions, tokens = torch.tensor(update, dtype=torch.long, device=self.ws.tokens.device)
        self.ws.tokens[rows, positions] = tokens
        self.ws.lengths.copy_(torch.tensor(self.host_lengths))
        return emitted


def _capacity(batch: PromptBatch, max_new_tokens: int, width: int) -> int:
    """Positions per row of every buffer: prompt, new tokens, a step's lookahead and the drafter's
    window (``drafter.py``), bucketed. It depends on the width, not on the mode, so that greedy
    decoding at width D+1 attends over exactly the key length that speculative decoding at depth D
    does for the same batch and token budget."""
    needed = batch.tokens.shape[1] + max_new_tokens + 3 * (width - 1) + 1
    return -(-needed // CAPACITY_BUCKET) * CAPACITY_BUCKET


def _start(model, batch: PromptBatch, max_new_tokens: int, stop_ids, vocab_size: int, width: int,
           depths: int, workspaces: Optional[WorkspacePool]):
    """(rows, per-row stats) after the audio encoding, the prefill and the first token."""
    size, prompt = batch.tokens.shape
    device = batch.tokens.device
    capacity = _capacity(batch, max_new_tokens, width)
    pool = workspaces or WorkspacePool()
    rows = DecodeRows(pool.get(model, size, capacity, width, depths, device), batch,
                      max_new_tokens, stop_ids)
    clock = PhaseClock(device)
    clock.mark()
    positions = torch.arange(prompt, device=device)[None].expand(size, prompt)
    embeddings = model.embed_inputs(batch.tokens, positions, batch.audio_features,
                                    batch.audio_feature_lengths)
    clock.mark()
    hidden = rows.ws.trunk(embeddings, positions)
    last = hidden[rows.ws.lengths - 1, rows.ws.index]
    first = rows.ws.cache.logits(last[None], vocab_size)[0].argmax(-1)
    clock.mark()
    rows.append([[token] for token in first.tolist()], [1] * size)
    stats = [DecodeStats(depths) for _ in range(size)]
    stats[0].encode_seconds, stats[0].prefill_seconds = clock.seconds(0, 1), clock.seconds(1, 2)
    return rows, stats


@torch.no_grad()
def greedy_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                  vocab_size: int, width: int = 1, workspaces: Optional[WorkspacePool] = None):
    """(outputs per row, DecodeStats per row) of KV-cached greedy decoding.

    With ``width`` w > 1 every step feeds the row's last token followed by w-1 fillers (the same
    token again), the shape of speculative decoding's verify forward at depth w-1: its tokens are
    then computed exactly as ``speculative_decode`` at that depth computes them (module docstring).
    ``workspaces`` keeps buffers (and, with ``cuda_graphs``, graphs of the step) across calls.
    """
    if width < 1:
        raise ValueError(f"greedy width {width}: must be >= 1")
    rows, stats = _start(model, batch, max_new_tokens, stop_ids, vocab_size, width, 0, workspaces)
    ws = rows.ws

    def step():
        hidden = ws.feed(ws.last_tokens()[:, None].expand(-1, width))
        # Logits at every position, the filler ones included: the head's GEMM then has the shape
        # it has in a verify step, which is what makes the first row's rounding the same.
        return ws.cache.logits(hidden, vocab_size).argmax(-1)[0]

    while not bool(rows.done.all()):
        active = ~rows.done
        tokens = ws.run('greedy', step).tolist()
        emitted = rows.append([[token] for token in tokens], [1] * len(tokens))
        for row in active.nonzero()[:, 0].tolist():
            stats[row].verify_steps += 1
            stats[row].verify_emitted += emitted[row]
    return rows.outputs, stats


@torch.no_grad()
def speculative_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                       vocab_size: int, depths: int, workspaces: Optional[WorkspacePool] = None):
    """(outputs per row, DecodeStats per row) of self-speculative decoding with ``depths`` MTP
    drafts; equal to ``greedy_decode(..., width=depths + 1)`` token for token."""
    rows, stats = _start(model, batch, max_new_tokens, stop_ids, vocab_size, depths + 1, depths,
                         workspaces)
    ws = rows.ws

    def step():
        drafts = ws.drafter.draft(ws.tokens, ws.lengths, ws.hidden, vocab_size, max(rows.host_lengths))
        hidden = ws.feed(torch.cat([ws.last_tokens()[:, None], drafts], dim=1))
        verdict = ws.cache.logits(hidden, vocab_size).argmax(-1).t()  # [b, D+1]: trunk's choices
        agreed = (drafts == verdict[:, :depths]).long().cumprod(dim=1)  # accepted prefix
        return torch.cat([verdict, agreed], dim=1)  # one tensor: one read per step

    first = True
    while not bool(rows.done.all()):
        active = ~rows.done
        # The first draft computes every position (its width is the prompt's): eager.
        host = (step() if first else ws.run('speculative', step)).tolist()
        first = False
        verdict, agreed = [row[:depths + 1] for row in host], [row[depths + 1:] for row in host]
        emitted = rows.append(verdict, [sum(a) + 1 for a in agreed])  # drafts 1..a equal verdict 0..a-1
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
