"""Beam search of the LLM steered by the CTC head (``evaluate --ctc-joint-weight W --ctc-beam-size B``).

The steered decoder of ``decode.joint_ctc_decode`` keeps one hypothesis per utterance and takes
the best-scoring candidate at every step; a word that the CTC head only confirms a few characters
later is then already lost. Beam search keeps B hypotheses per utterance (joint CTC/attention beam
search, Watanabe et al. 2017, as ESPnet decodes): every live hypothesis proposes the LLM's top
JOINT_CANDIDATES tokens, each scored as the steered decoder scores it and added to the
hypothesis' score, and the B best candidates of each utterance go on. A finished hypothesis (its
stop token, or the token budget) carries over with its score as it is. Both terms of a step's
score are changes of log-probabilities of a growing prefix, never positive, so no live hypothesis
can overtake a finished one that scores at least as well: an utterance ends there, and its
transcript is its best finished hypothesis. For one that stopped, the score is (1 - w) log
p_LLM(text | audio) + w log p_CTC(spelling | audio): the changes of the CTC prefix score add up to
the probability that the audio holds the spelling and nothing more.

Rows: utterance u's hypotheses are rows u*B .. u*B+B-1 of one workspace; a step copies each chosen
hypothesis' row (its KV cache, tokens, CTC state) into the row it continues in (``reorder``). A
fresh batch's B rows of an utterance are copies of one prompt, so only the first counts at the
first choice. Eager, as the steered decoder.
"""

from collections.abc import Sequence

import torch

from .ctc_joint import JointCTCChooser, TokenSpelling, steering_chooser
from .decode import DecodeStats, PromptBatch, check_steerable, encode_for_steering, start_decoding
from .lexicon import Lexicon
from .rows import EMITTED, STEPS, RowState
from .trunk_cache import head_logits
from .workspace import WorkspacePool


class Beams:
    """The scores of ``utterances`` x ``size`` hypotheses and the choice of the next ones."""

    def __init__(self, chooser: JointCTCChooser, utterances: int, size: int, device):
        self.chooser, self.size = chooser, size
        self.scores = torch.full((utterances, size), float('-inf'), dtype=torch.float64, device=device)
        self.scores[:, 0] = 0.0  # a fresh utterance's rows are copies of one hypothesis
        self.first_row = torch.arange(utterances, device=device)[:, None] * size

    def choose(self, logits: torch.Tensor, done: torch.Tensor):
        """(rows [R], tokens [R]) for the LLM's ``logits`` [R, V] of every row, ``done`` [R] the
        finished ones: row r goes on as a copy of hypothesis ``rows[r]`` followed by ``tokens[r]``
        (a finished one by nothing)."""
        proposal = self.chooser.propose(logits)
        width = proposal.tokens.shape[1]
        totals = self.scores.view(-1, 1) + proposal.scores
        carried = torch.full_like(totals, float('-inf'))
        carried[:, 0] = self.scores.view(-1)
        totals = torch.where(done[:, None], carried, totals)
        self.scores, best = totals.view(len(self.scores), -1).topk(self.size, dim=1)
        rows = (self.first_row + best // width).view(-1)
        return rows, self.chooser.take(proposal, (best % width).view(-1), rows)

    def settle(self, state: RowState) -> None:
        """Finish every utterance whose best finished hypothesis scores at least its best live one."""
        done = state.done.view_as(self.scores)
        finished = self.scores.masked_fill(~done, float('-inf')).amax(dim=1)
        live = self.scores.masked_fill(done, float('-inf')).amax(dim=1)
        over = (finished > float('-inf')) & (finished >= live)
        state.done.logical_or_(over[:, None].expand_as(done).reshape(-1))
        state.all_done.copy_(state.done.all())


def copies(batch: PromptBatch, size: int) -> PromptBatch:
    """``batch`` with each row (and its audio) repeated ``size`` times in place."""
    return PromptBatch(batch.tokens.repeat_interleave(size, 0), batch.lengths.repeat_interleave(size, 0),
                       batch.audio_features.repeat_interleave(size, 0),
                       batch.audio_feature_lengths.repeat_interleave(size, 0),
                       (1,) * (len(batch.tokens) * size), batch.pad_id)


@torch.no_grad()
def joint_ctc_beam_decode(model, batch: PromptBatch, max_new_tokens: int, stop_ids: Sequence[int],
                          vocab_size: int, weight: float, spelling: TokenSpelling, beam_size: int,
                          workspaces: WorkspacePool | None = None, lexicon: Lexicon | None = None):
    """(outputs per utterance, DecodeStats per utterance) of the steered beam search (module
    docstring) with ``beam_size`` hypotheses per utterance; one audio per row of ``batch``; with a
    ``lexicon``, each word it lacks costs its penalty (``lexicon.py``)."""
    if beam_size < 1:
        raise ValueError(f'beam size {beam_size}: must be >= 1')
    check_steerable(batch, workspaces)
    utterances = len(batch.tokens)
    encoded, clock = encode_for_steering(model, batch)
    chooser = steering_chooser(model, encoded.output, batch.audio_feature_lengths, stop_ids, vocab_size,
                               weight, spelling, copies=beam_size, lexicon=lexicon)
    beams = Beams(chooser, utterances, beam_size, batch.tokens.device)
    none_finished = torch.zeros(utterances * beam_size, dtype=torch.bool, device=batch.tokens.device)

    def logits(hidden):  # [1, R, h] -> [R, V]
        return head_logits(model.language_model, hidden[0], vocab_size)

    def first(hidden):  # the prefill's choice, [1, R]: the rows of an utterance are still copies of one
        return beams.choose(logits(hidden), none_finished)[1][None]

    expanded = copies(batch, beam_size)
    ws, clock = start_decoding(model, expanded, max_new_tokens, stop_ids, vocab_size, 1, 0, workspaces, first,
                               (encoded.repeated(beam_size), clock))
    beams.settle(ws.rows)

    def step():
        hidden = ws.feed(ws.last_tokens()[:, None])
        source, tokens = beams.choose(logits(hidden), ws.rows.done)
        ws.reorder(source)
        active = ~ws.rows.done
        ws.rows.count_step(active, ws.rows.emit(tokens[:, None]))
        beams.settle(ws.rows)

    while not bool(ws.rows.all_done):
        ws.run('beam', step)
    outputs, counts = ws.rows.read(expanded.lengths.tolist())
    best = (beams.first_row[:, 0] + beams.scores.argmax(dim=1)).tolist()
    stats = [DecodeStats(0, verify_steps=counts[r][STEPS], verify_emitted=counts[r][EMITTED]) for r in best]
    stats[0].encode_seconds, stats[0].prefill_seconds = clock.seconds(0, 1), clock.seconds(1, 2)
    return [outputs[r] for r in best], stats
