"""Device state of decoding one batch shape, kept from batch to batch, and CUDA graphs of its steps.

A decoding step (greedy: one trunk forward of w positions; speculative: the MTP drafts over the
window and the verify forward; both: the rows' bookkeeping, ``rows.py``) has the same shapes at
every step of every batch of one shape (rows, capacity, width: ``kv_cache.py``) and reads and
writes only tensors that live here: the trunk and MTP caches, the tokens, lengths and trunk states
by position and the rows' state. So a step is captured once as a CUDA graph and replayed: the GPU
then runs its few hundred kernels back to back, free of the Python, module calls and launches
that otherwise bound a small model's step. With graphs, batches of at most PREFILL_GRAPH_MAX_ROWS
rows have their prefill captured too, as two graphs per padded prompt shape
(``decode.graph_shapes``), so that its two phases are timed apart: the audio encoding spliced into
the prompt's embeddings, then the trunk (and the MTP layers) over them up to the first token. At
batch 1 each runs ~1,000 kernels; eager, their launches cost more than the GPU's work (on one H200,
graphs cut encoding and prefill from 4.6 to 1.75 s over 200 utterances, docs/performance.md); a
wide batch's shapes are rarely met twice, so captures cost more than they save (at batch 64, 1.22
against 0.85 s over 1,000). All prefill graphs share one memory pool: they run one after another
and leave nothing in it (their results go to the workspace's buffers, allocated outside any
capture).

Capture: at the first call the step runs eagerly on a side stream - that run is the call's step
(cuBLAS and the allocator warm up on it) - then is recorded without running; later calls replay
it. A step returns nothing: what it computes is in the workspace's buffers.
"""

from collections.abc import Callable, Sequence

import torch

from ..data.frames import audio_tokens
from ..model.salm import EncodedAudio, check_audio_placeholders
from .drafter import MTPDrafter
from .rows import RowState
from .trunk_cache import TrunkCache

PREFILL_GRAPH_MAX_ROWS = 8


class DecodeWorkspace:
    """Trunk KV cache, MTP drafter (``depths`` > 0) and by-position buffers for ``batch_size``
    rows of ``capacity`` positions, stepping ``width`` positions at a time."""

    def __init__(self, model, batch_size: int, capacity: int, width: int, depths: int, device,
                 cuda_graphs: bool = False, prefill_pool=None):
        lm = model.language_model
        self.model, self.capacity, self.width, self.cuda_graphs = model, capacity, width, cuda_graphs
        self.graphed_prefill = cuda_graphs and batch_size <= PREFILL_GRAPH_MAX_ROWS
        self.prefill_pool = prefill_pool
        self.cache = TrunkCache(lm, batch_size, capacity, device)
        self.drafter = MTPDrafter(lm, batch_size, capacity, depths, device) if depths else None
        weight = lm.embedding.word_embeddings.weight
        self.tokens = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.hidden = torch.zeros(capacity, batch_size, weight.shape[1], dtype=weight.dtype,
                                  device=device)
        self.prompt_embeddings = torch.zeros_like(self.hidden)
        self.audio_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # encode graphs' inputs, by name
        self.index = torch.arange(batch_size, device=device)
        self.rows = RowState(self.tokens, self.lengths, depths, weight.shape[0])
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}

    def load(self, tokens: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int,
             stop_ids: Sequence[int]) -> None:
        """Start a batch: right-padded prompts [b, P] of ``lengths`` [b], decoded until a stop id
        or ``max_new_tokens`` per row."""
        self.tokens[:, :tokens.shape[1]] = tokens
        self.lengths.copy_(lengths)
        self.rows.start(max_new_tokens, stop_ids)

    def encode(self, prompt: int, features: torch.Tensor, feature_lengths: torch.Tensor,
               encoded: EncodedAudio | None = None) -> None:
        """The loaded prompts' first ``prompt`` embeddings with the audio (``features`` [n, mels, T]
        of ``feature_lengths`` [n]) encoded and spliced in (``SALM.embed_inputs``), into
        ``prompt_embeddings``; ``encoded``: the encoder's pass over them already made (eager only)."""
        cfg = self.model.cfg
        tokens = self.tokens[:, :prompt]
        check_audio_placeholders(tokens, audio_tokens(feature_lengths, cfg.audio_frame_stack)
                                 if features.numel() else None, cfg.audio_token_id)
        if encoded is not None and self.graphed_prefill:
            raise ValueError('a pre-encoded audio is spliced eagerly: give a workspace pool without CUDA graphs')
        name = f'encode {prompt} {tuple(features.shape)}'
        if self.graphed_prefill:  # the graph reads its inputs where it was captured
            if name not in self.audio_inputs:
                self.audio_inputs[name] = (torch.empty_like(features), torch.empty_like(feature_lengths))
            static = self.audio_inputs[name]
            static[0].copy_(features)
            static[1].copy_(feature_lengths)
            features, feature_lengths = static

        def step():
            self.prompt_embeddings[:prompt] = self.model.embed_inputs(
                tokens, self._prompt_positions(prompt), features, feature_lengths, placeholders_checked=True,
                encoded=encoded)

        self._replayed(name, step, self.graphed_prefill, self.prefill_pool)

    def prefill(self, prompt: int, vocab_size: int, choose: Callable | None = None) -> None:
        """The trunk over the encoded prompts, each row's first token (the head's argmax, or
        ``choose(hidden [1, b, h])`` -> [1, b]) and, with drafts, the MTP layers over the prompts
        (``MTPDrafter.prefill``)."""
        def step():
            hidden = self.trunk(self.prompt_embeddings[:prompt], self._prompt_positions(prompt))
            last = hidden[self.lengths - 1, self.index][None]
            self.rows.emit((choose(last) if choose else self.cache.next_tokens(last, vocab_size)).t())
            if self.drafter is not None:
                self.drafter.prefill(self.tokens, self.hidden, prompt + 1)

        self._replayed(f'prefill {prompt}', step, self.graphed_prefill, self.prefill_pool)

    def _prompt_positions(self, prompt: int) -> torch.Tensor:
        """Positions 0 .. prompt-1 of every row, [b, prompt]."""
        return torch.arange(prompt, device=self.index.device)[None].expand(len(self.index), -1)

    def last_tokens(self) -> torch.Tensor:
        return self.tokens[self.index, self.lengths - 1]

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Trunk forward of ``ids`` [b, w] placed at each row's last emitted position (the first id
        is the row's last emitted token) and the w-1 after it; returns the hidden states [w, b, h],
        also kept by position for the drafter."""
        positions = (self.lengths - 1)[:, None] + torch.arange(ids.shape[1], device=ids.device)[None, :]
        embeddings = self.model.language_model.embedding(input_ids=ids, position_ids=positions)
        return self.trunk(embeddings, positions)

    def trunk(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Trunk states [q, b, h] of ``embeddings`` at ``positions`` [b, q], kept by position."""
        hidden = self.cache.forward(embeddings, positions)
        self.hidden[positions.t(), self.index[None, :]] = hidden
        return hidden

    def reorder(self, rows: torch.Tensor) -> None:
        """Row r becomes a copy of row ``rows[r]``: its cache, tokens, lengths, trunk states and
        state (beam search, which has no drafter)."""
        if self.drafter is not None:
            raise ValueError('rows of a workspace with MTP drafts cannot be reordered')
        self.cache.reorder(rows)
        for buffer in (self.tokens, self.lengths):
            buffer.copy_(buffer[rows])
        self.hidden.copy_(self.hidden[:, rows])
        self.rows.reorder(rows)

    def run(self, name: str, step: Callable[[], None]) -> None:
        """Run the decoding step ``step()`` once: eager, or with ``cuda_graphs`` replayed from the
        graph captured at the first call of ``name`` (later calls' ``step`` must compute the same
        thing)."""
        self._replayed(name, step, self.cuda_graphs)

    def _replayed(self, name: str, step: Callable[[], None], graphed: bool, pool=None) -> None:
        """``run``, for any part of decoding, ``graphed`` or eager; a new graph is captured in
        memory ``pool`` (None: its own)."""
        if not graphed:
            step()
        elif name not in self.graphs:
            self.graphs[name] = capture(step, pool)
        else:
            self.graphs[name].replay()


def capture(step: Callable[[], None], pool=None) -> torch.cuda.CUDAGraph:
    """The graph of ``step``, recorded after one eager run on a side stream (that run is the
    step: recording runs nothing)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph


class WorkspacePool:
    """Workspaces by shape, kept across batches and decoding calls of one model, so that each shape
    allocates its buffers and captures its graphs once. Capacities are bucketed (``decode.py``),
    so a run meets few shapes."""

    def __init__(self, cuda_graphs: bool = False):
        if cuda_graphs and not torch.cuda.is_available():
            raise ValueError('--cuda-graphs needs a GPU')
        self.cuda_graphs = cuda_graphs
        self.prefill_pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        self.workspaces: dict[tuple, DecodeWorkspace] = {}

    def get(self, model, batch_size: int, capacity: int, width: int, depths: int, device) -> DecodeWorkspace:
        key = (id(model), batch_size, capacity, width, depths, str(device))
        if key not in self.workspaces:
            self.workspaces[key] = DecodeWorkspace(model, batch_size, capacity, width, depths, device,
                                                   self.cuda_graphs, self.prefill_pool)
        return self.workspaces[key]
