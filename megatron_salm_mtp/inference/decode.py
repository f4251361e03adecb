"""Batched greedy and MTP self-speculative decoding of the SALM over the trunk's KV cache.

Both loops share the prefill (audio encoded once and spliced into the prompt embedding by
``SALM.embed_inputs``) and the per-row bookkeeping of ``rows.py``, done on the device inside each
step. Greedy feeds each row's last
token; speculative decoding feeds it plus D drafts (``drafter.py``), takes the trunk's argmax at
each of the D+1 positions and accepts the longest prefix of drafts that the trunk agrees with plus
the trunk's own next token. Rejected drafts need no rollback: the cache is kept by position
(``kv_cache.py``) and the next step overwrites them.

Exact, in bf16 too. Every emitted token is a trunk argmax given the emitted prefix, so the output
equals greedy decoding in exact arithmetic; in floating point it must also be computed the same way,
or a near-tie flips (in bf16 it did, in a few utterances per hundred, when greedy ran a one-token
forward over a differently laid-out cache and the verify step a (D+1)-token one).
``greedy_decode(width=D+1)`` therefore runs every step at the verify step's shapes: the last token
plus D fillers, logits at all D+1 positions. A token at position p then comes out of the very same
computation in both loops: the same kernels at the same shapes (GEMMs of (D+1) x b rows, attention
of D+1 queries over the same number of cached keys), a query at p sees slots 0..p holding the same
values (by induction; later slots, fillers or rejected drafts, get an attention weight of exactly
0), and a row of a GEMM or a query of the attention does not round differently for sitting at
another index. Cost: on a GPU a step of a small batch reads the weights once whatever its width, so
D+1 positions cost about what one does (the benchmark reports both); on a CPU greedy at width 1
stays the cheaper reference.
Re-deciding near-ties with a one-token forward instead would not be exact: greedy's own state
(its cached keys) comes from one-token forwards that speculative decoding never runs.

Rows accept different numbers of tokens per step; each row has its own positions in the cache, so
no row waits for another. Finished rows ride along until the batch ends, their outputs ignored.
The steps after the prefill run over a ``workspace.py`` workspace, replayed from CUDA graphs when
its pool asks for them: a whole step (drafts, verify, acceptance and bookkeeping) is one replay,
and the host reads one flag between steps. What has the prompt's width (the audio encoding, the
trunk's prefill and, with drafts, the MTP layers over the prompt) runs before the first step and is
timed as encoding and prefill; with graphs and a narrow batch it is replayed too, the batch first
padded to a few shapes (``graph_shapes``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.features import AudioPadding
from ..model.salm import EncodedAudio
from .ctc_joint import TokenSpelling, steering_chooser
from .lexicon import Lexicon
from .rows import EMITTED, STEPS
from .timing import PhaseClock
from .trunk_cache import head_logits
from .workspace import PREFILL_GRAPH_MAX_ROWS, DecodeWorkspace, WorkspacePool

CAPACITY_BUCKET = 64
"""Buffer capacities are rounded up to a multiple of this: batches of one size then share a few
workspaces (and CUDA graphs) whatever their prompt lengths."""

PROMPT_BUCKET = 32
"""With CUDA graphs, prompts are right-padded to a multiple of this many positions..."""
FRAME_BUCKET = 64
"""...and audio to a multiple of this many mel frames (training's --audio-pad-multiple), so that
the prefill graphs of a run are few (a graph per shape, captured at its first batch)."""


@dataclass
class PromptBatch:
    """Right-padded prompts (placeholders included) and the audio their placeholders stand for."""
    tokens: torch.Tensor  # [b, P] long
    lengths: torch.Tensor  # [b] prompt lengths
    audio_features: torch.Tensor  # [n_audio, mels, T]
    audio_feature_lengths: torch.Tensor  # [n_audio]
    audios_per_row: tuple[int, ...] = ()  # how many of the audios each row holds, in order
    pad_id: int = 0  # what fills the prompts past their lengths


def graph_shapes(batch: PromptBatch, max_frames: int) -> PromptBatch:
    """``batch`` with its prompts padded to a multiple of PROMPT_BUCKET positions (``pad_id``) and its
    audio to a multiple of FRAME_BUCKET frames, at most ``max_frames`` (zeros, as ``pad_features``
    pads: what lies past a length is masked or overwritten, so every row decodes the same tokens)."""
    prompt = batch.tokens.shape[1]
    tokens = F.pad(batch.tokens, (0, -prompt % PROMPT_BUCKET), value=batch.pad_id)
    features = batch.audio_features
    if features.numel():
        frames = features.shape[-1]
        features = F.pad(features, (0, AudioPadding(FRAME_BUCKET, max_frames).frames(frames) - frames))
    return PromptBatch(tokens, batch.lengths, features, batch.audio_feature_lengths, batch.audios_per_row,
                       batch.pad_id)


@dataclass
class DecodeStats:
    """Counts of one row (or, merged, of many); ``report.py`` turns them into rates.

    The seconds are the batch's, set on its first row only, so that sums over rows count each
    batch once; decoding time less both is the time of the steps after the prefill."""
    depths: int = 0
    verify_steps: int = 0  # trunk forwards after the prefill while the row was active
    verify_emitted: int = 0  # tokens those forwards emitted (after EOS / budget cuts)
    draft_attempts: list[int] = field(default_factory=list)  # per depth: drafts whose prefix was accepted
    draft_accepts: list[int] = field(default_factory=list)  # per depth: drafts accepted
    encode_seconds: float = 0.0  # audio encoding and projection, spliced into the prompt
    prefill_seconds: float = 0.0  # the trunk (and the MTP layers) over the prompt, to the first token

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


def _capacity(batch: PromptBatch, max_new_tokens: int, width: int) -> int:
    """Positions per row of every buffer: prompt, new tokens, a step's lookahead and the drafter's
    window (``drafter.py``), bucketed. It depends on the width, not on the mode, so that greedy
    decoding at width D+1 attends over exactly the key length that speculative decoding at depth D
    does for the same batch and token budget."""
    needed = batch.tokens.shape[1] + max_new_tokens + 3 * (width - 1) + 1
    return -(-needed // CAPACITY_BUCKET) * CAPACITY_BUCKET


def start_decoding(model, batch: PromptBatch, max_new_tokens: int, stop_ids, vocab_size: int, width: int,
                   depths: int, workspaces: WorkspacePool | None, choose=None,
                   encoded: tuple[EncodedAudio, PhaseClock] | None = None):
    """(workspace, phase clock) after the audio encoding, the prefill, the first token (the argmax
    or ``choose``'s, ``DecodeWorkspace.prefill``) and, with drafts, the MTP layers over the prompt
    (``MTPDrafter.prefill``: every step after it then has the same shapes). ``encoded``: the
    encoder's pass already made and its clock (``encode_for_steering``), spliced in instead."""
    pool = workspaces or WorkspacePool()
    if pool.cuda_graphs and batch.tokens.shape[0] <= PREFILL_GRAPH_MAX_ROWS:
        batch = graph_shapes(batch, 2 * model.cfg.encoder_max_source_positions)
    size, prompt = batch.tokens.shape
    device = batch.tokens.device
    ws = pool.get(model, size, _capacity(batch, max_new_tokens, width), width, depths, device)
    ws.load(batch.tokens, batch.lengths, max_new_tokens, stop_ids)
    audio, clock = encoded or (None, PhaseClock(device))
    if audio is None:
        clock.mark()
    ws.encode(prompt, batch.audio_features, batch.audio_feature_lengths, audio)
    clock.mark()
    ws.prefill(prompt, vocab_size, choose)
    clock.mark()
    return ws, clock


def _finish(ws: DecodeWorkspace, name: str, step, batch: PromptBatch, clock: PhaseClock, depths: int):
    """(outputs per row, DecodeStats per row) of running ``step`` until every row has finished."""
    while not bool(ws.rows.all_done):  # the one device read of a step
        ws.run(name, step)
    outputs, counts = ws.rows.read(batch.lengths.tolist())
    stats = [DecodeStats(depths, verify_steps=c[STEPS], verify_emitted=c[EMITTED],
                         draft_attempts=c[2:2 + depths], draft_accepts=c[2 + depths:]) for c in counts]
    stats[0].encode_seconds, stats[0].prefill_seconds = clock.seconds(0, 1), clock.seconds(1, 2)
    return outputs, stats


@torch.no_grad()
def greedy_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                  vocab_size: int, width: int = 1, workspaces: WorkspacePool | None = None):
    """(outputs per row, DecodeStats per row) of KV-cached greedy decoding.

    With ``width`` w > 1 every step feeds the row's last token followed by w-1 fillers (the same
    token again), the shape of speculative decoding's verify forward at depth w-1: its tokens are
    then computed exactly as ``speculative_decode`` at that depth computes them (module docstring).
    ``workspaces`` keeps buffers (and, with ``cuda_graphs``, graphs of the step) across calls.
    """
    if width < 1:
        raise ValueError(f'greedy width {width}: must be >= 1')
    ws, clock = start_decoding(model, batch, max_new_tokens, stop_ids, vocab_size, width, 0, workspaces)

    def step():
        active = ~ws.rows.done
        hidden = ws.feed(ws.last_tokens()[:, None].expand(-1, width))
        # The head at every position, the filler ones included: its GEMM then has the shape it
        # has in a verify step, which is what makes the first row's rounding the same.
        tokens = ws.cache.next_tokens(hidden, vocab_size)[0]
        ws.rows.count_step(active, ws.rows.emit(tokens[:, None]))

    return _finish(ws, 'greedy', step, batch, clock, 0)


@torch.no_grad()
def speculative_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                       vocab_size: int, depths: int, workspaces: WorkspacePool | None = None):
    """(outputs per row, DecodeStats per row) of self-speculative decoding with ``depths`` MTP
    drafts; equal to ``greedy_decode(..., width=depths + 1)`` token for token."""
    ws, clock = start_decoding(model, batch, max_new_tokens, stop_ids, vocab_size, depths + 1, depths,
                               workspaces)

    def step():
        active = ~ws.rows.done
        drafts = ws.drafter.draft(ws.tokens, ws.lengths, ws.hidden, vocab_size)
        hidden = ws.feed(torch.cat([ws.last_tokens()[:, None], drafts], dim=1))
        verdict = ws.cache.next_tokens(hidden, vocab_size).t()  # [b, D+1]: the trunk's choices
        agreed = (drafts == verdict[:, :depths]).long().cumprod(dim=1)  # accepted prefix
        # Drafts 1..a equal the trunk's choices 0..a-1: emit those and the trunk's choice a.
        ws.rows.count_step(active, ws.rows.emit(verdict, agreed.sum(dim=1)), agreed)

    return _finish(ws, 'speculative', step, batch, clock, depths)


def encode_for_steering(model, batch: PromptBatch) -> tuple[EncodedAudio, PhaseClock]:
    """The encoder's pass over ``batch``'s audios, for the CTC head and the prefill alike, and the
    clock that times it as the decoding's encode phase."""
    clock = PhaseClock(batch.tokens.device)
    clock.mark()
    return model.encode_audio(batch.audio_features, batch.audio_feature_lengths), clock


def check_steerable(batch: PromptBatch, workspaces: WorkspacePool | None) -> None:
    """Decoding steered by the CTC head needs one audio per row and runs eagerly."""
    if batch.audio_features.shape[0] != batch.tokens.shape[0] or any(n != 1 for n in batch.audios_per_row):
        raise ValueError(f'joint CTC decoding needs one audio per utterance: {batch.tokens.shape[0]} rows, '
                         f'{batch.audio_features.shape[0]} audios')
    if workspaces is not None and workspaces.cuda_graphs:
        raise ValueError('joint CTC decoding runs eagerly: give it a workspace pool without CUDA graphs')


@torch.no_grad()
def joint_ctc_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int], vocab_size: int,
                     weight: float, spelling: TokenSpelling, workspaces: WorkspacePool | None = None,
                     lexicon: Lexicon | None = None):
    """(outputs per row, DecodeStats per row) of greedy decoding steered by the CTC head with
    ``weight`` (``ctc_joint.py``); one audio per row. Eager: each step's candidates are scored over
    every frame of the row's audio: one encoder pass feeds the prefill and the head. With a
    ``lexicon``, each word it lacks costs its penalty (``lexicon.py``)."""
    check_steerable(batch, workspaces)
    encoded, clock = encode_for_steering(model, batch)
    chooser = steering_chooser(model, encoded.output, batch.audio_feature_lengths, stop_ids, vocab_size,
                               weight, spelling, lexicon=lexicon)
    lm = model.language_model

    def choose(hidden):  # [1, b, h] -> [1, b]
        return chooser(head_logits(lm, hidden[0], vocab_size))[None]

    ws, clock = start_decoding(model, batch, max_new_tokens, stop_ids, vocab_size, 1, 0, workspaces, choose,
                               (encoded, clock))

    def step():
        active = ~ws.rows.done
        tokens = choose(ws.feed(ws.last_tokens()[:, None]))
        ws.rows.count_step(active, ws.rows.emit(tokens.t()))

    return _finish(ws, 'joint', step, batch, clock, 0)
