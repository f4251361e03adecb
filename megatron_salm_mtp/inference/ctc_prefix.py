"""CTC prefix scores of one hypothesis per row, extended label by label (joint CTC decoding).

The prefix score of labels h is the probability that the CTC head's alignment of the whole audio
starts with h (Graves 2012, section 7.6; Watanabe et al. 2017 use it beside an attention decoder):
the sum over frames t of the probability of h ending at t with its last label first emitted there.
It is what lets a decoder of another vocabulary consult the CTC head at each step: extending h by a
label c never raises it, and a label the audio does not hold lowers it sharply. At the end,
the full-sequence probability (h and nothing after it) replaces it.

The forward variables are kept over all frames, in log space and fp64: ``emitting[t]`` (h's
alignments over frames 0..t ending in its last label) and ``blank[t]`` (ending in a blank). Their
recursions are linear in t, x_t = a_t (x_{t-1} + b_t), so each extension is solved for every frame
at once by cumulative sums (``_linear_scan``) rather than a loop over frames.
"""

import torch

NEG_INF = float('-inf')


def _linear_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """x [..., T] with x_t = log_a_t + logaddexp(x_{t-1}, log_b_t) and x_{-1} = -inf, in log space:
    exp(x_t) = sum over s <= t of exp(log_b_s) * prod over s..t of exp(log_a)."""
    cumulative = log_a.cumsum(dim=-1)
    return cumulative + torch.logcumsumexp(log_b + log_a - cumulative, dim=-1)


class CTCPrefixScorer:
    """Prefix scores of one growing label sequence per row of ``log_probs`` [b, T, C] (fp64; the
    blank is class ``blank``), each row valid for its first ``lengths`` [b] frames."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank: int):
        self.log_probs = log_probs.double()
        size, frames, _ = self.log_probs.shape
        self.blank_id = blank
        self.valid = torch.arange(frames, device=log_probs.device)[None] < lengths[:, None]  # [b, T]
        self.last_frame = (lengths - 1).clamp(min=0)
        blanks = self.log_probs[..., blank].masked_fill(~self.valid, 0).cumsum(dim=-1)
        self.emitting = torch.full_like(blanks, NEG_INF)  # the empty prefix has no label to end in
        self.blank = blanks
        self.score = torch.zeros(size, dtype=torch.float64, device=log_probs.device)  # log 1
        self.last = torch.full((size,), -1, dtype=torch.long, device=log_probs.device)  # none yet

    def extend(self, labels: torch.Tensor, counts: torch.Tensor):
        """Prefix scores [b, k] of each row's hypothesis followed by ``labels`` [b, k, L] (the first
        ``counts`` [b, k] of each), and the states to :meth:`advance` to; zero labels keep the score."""
        _, k, width = labels.shape  # the states below are only ever replaced, never written in place
        emitting = self.emitting[:, None].expand(-1, k, -1)
        blank = self.blank[:, None].expand(-1, k, -1)
        score = self.score[:, None].expand(-1, k)
        last = self.last[:, None].expand(-1, k)
        for j in range(width):
            taking = j < counts  # [b, k]
            label = labels[..., j]
            new = self._step(emitting, blank, last, label)
            mask = taking[..., None]
            emitting = torch.where(mask, new[0], emitting)
            blank = torch.where(mask, new[1], blank)
            score = torch.where(taking, new[2], score)
            last = torch.where(taking, label, last)
        return score, (emitting, blank, last)

    def _step(self, emitting, blank, last, label):
        """(emitting, blank, score) of hypotheses [b, k] (states [b, k, T]) each extended by
        ``label`` [b, k]."""
        frames = emitting.shape[-1]
        emits = self.log_probs.gather(2, label[:, None, :].expand(-1, frames, -1))
        emits = emits.permute(0, 2, 1)  # [b, k, T]: the label's log-probability at each frame
        # h's mass at t from which c may start at t+1: a repeated label needs a blank between.
        ready = torch.where((last == label)[..., None], blank, torch.logaddexp(blank, emitting))
        first = torch.full_like(ready[..., :1], NEG_INF).masked_fill((last < 0)[..., None], 0.0)
        started = torch.cat([first, ready[..., :-1]], dim=-1)  # only an empty h starts at frame 0
        new_emitting = _linear_scan(emits, started)
        blanks = self.log_probs[..., self.blank_id][:, None].expand_as(new_emitting)
        shifted = torch.cat([torch.full_like(new_emitting[..., :1], NEG_INF), new_emitting[..., :-1]], dim=-1)
        new_blank = _linear_scan(blanks, shifted)
        starts = (started + emits).masked_fill(~self.valid[:, None], NEG_INF)
        return new_emitting, new_blank, torch.logsumexp(starts, dim=-1)

    def final(self) -> torch.Tensor:
        """Log-probability [b] of each row's hypothesis as the whole transcript of its audio."""
        index = self.last_frame[:, None]
        return torch.logaddexp(self.emitting.gather(1, index), self.blank.gather(1, index))[:, 0]

    def advance(self, states, scores: torch.Tensor, choice: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Make candidate ``choice`` [b] of :meth:`extend`'s ``states`` (scores [b, k]) each row's
        hypothesis: of the row's own candidates, or of row ``rows`` [b]'s (beam search; rows that
        share their audio, since the states are over its frames)."""
        emitting, blank, last = states
        source = torch.arange(len(choice), device=choice.device) if rows is None else rows
        self.emitting = emitting[source, choice]
        self.blank = blank[source, choice]
        self.last = last[source, choice]
        self.score = scores[source, choice]
