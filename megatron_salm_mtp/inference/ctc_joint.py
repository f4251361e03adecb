"""Greedy decoding of the LLM steered by the encoder's CTC head (``evaluate --ctc-joint-weight``).

Why: the LLM reads the encoder's frames through the projector and may write fluent text they do
not hold (a sound-alike word, a rarer one, a sentence cut short), while the CTC head spells what
it heard without a language model (``ctc_greedy.py``). Joint CTC/attention decoding (Watanabe et
al. 2017, as in ESPnet) scores each candidate next token by both: with weight w,

    (1 - w) * log p_LLM(token | prefix) + w * (log ctc(prefix + token) - log ctc(prefix))

where ctc(h) is the CTC prefix score of h's spelling (``ctc_prefix.py``) and, for a stop token, the
probability that the audio holds h and nothing more. Greedy: one hypothesis per row, the candidates
the LLM's top JOINT_CANDIDATES tokens.

The two vocabularies differ (the LLM writes tokenizer pieces, the head spells characters), so each
piece's text is spelled as training spelled transcripts (``data.ctc_text``): lowercased, other
characters a word break. A piece's breaks become one space between two spelled words (never at
the start), so the labels a row has consumed are always the spelling of the text it has written.
"""

from dataclasses import dataclass

import torch

from ..data.ctc_text import CTC_CHARACTERS, character_ids, spelled_pieces
from ..data.frames import encoder_frames
from .ctc_prefix import CTCPrefixScorer
from .lexicon import Lexicon, LexiconRows, LexiconStep

JOINT_CANDIDATES = 8
"""Tokens scored per step: the LLM's most likely ones. Where it hesitates the right token is among
its first few; further down CTC would only pick pieces the LLM finds implausible."""
SPACE = CTC_CHARACTERS.index(' ')
JOINT_UNITS = ('characters',)
"""CTC target units the steered decoder can spell a token in."""


@dataclass
class TokenSpelling:
    """Each vocabulary id's spelling in CTC characters, as tensors indexed by id."""
    labels: torch.Tensor  # [V, L] the characters of its words, inner breaks as one space; padded
    counts: torch.Tensor  # [V] how many of ``labels`` are real (0: no letter or digit)
    leading_break: torch.Tensor  # [V] bool: its text starts with a word break
    trailing_break: torch.Tensor  # [V] bool: ... ends with one
    has_break: torch.Tensor  # [V] bool: ... holds one


def token_spelling(tokenizer, vocab_size: int, device) -> TokenSpelling:
    """The spelling of each of the first ``vocab_size`` ids of ``tokenizer``, on ``device``."""
    texts = spelled_pieces(tokenizer, vocab_size)
    ids = [character_ids(t) for t in texts]
    width = max(1, max(len(i) for i in ids))
    labels = torch.zeros(vocab_size, width, dtype=torch.long)
    for token, spelling in enumerate(ids):
        labels[token, :len(spelling)] = torch.tensor(spelling, dtype=torch.long)

    def flags(test):
        return torch.tensor([test(t) for t in texts], dtype=torch.bool, device=device)

    return TokenSpelling(labels.to(device), torch.tensor([len(i) for i in ids], device=device),
                         flags(lambda t: t.startswith(' ')), flags(lambda t: t.endswith(' ')),
                         flags(lambda t: ' ' in t))


@dataclass
class Proposal:
    """Each row's candidate next tokens and their joint scores, with what taking one needs."""
    tokens: torch.Tensor  # [b, k] the LLM's likeliest tokens
    scores: torch.Tensor  # [b, k] fp64: (1 - w) log p_LLM + w (change in the CTC prefix score)
    ctc_scores: torch.Tensor  # [b, k] the CTC prefix score each candidate leads to
    ctc_states: tuple  # the scorer's states of each candidate (``CTCPrefixScorer.extend``)
    lexicon_step: LexiconStep | None = None  # with a lexicon: each candidate's word state


class JointCTCChooser:
    """Each row's next token by the joint score (module docstring); called once per decoding step
    with the LLM's logits, it keeps each row's CTC hypothesis in step with what it chose.
    ``propose`` and ``take`` split a call for beam search (``ctc_beam.py``), where a row may take
    a candidate of another row. With a ``lexicon``, each word the list lacks costs its penalty
    (``lexicon.py``)."""

    def __init__(self, scorer: CTCPrefixScorer, spelling: TokenSpelling, weight: float, stop: torch.Tensor,
                 lexicon: Lexicon | None = None):
        if not 0 < weight <= 1:
            raise ValueError(f'joint CTC weight {weight}: must be in (0, 1]')
        self.scorer, self.spelling, self.weight, self.stop = scorer, spelling, weight, stop
        self.words = LexiconRows(lexicon, len(scorer.score), stop) if lexicon is not None else None
        # Per row: a word break written since its last letter (whose label is the scorer's ``last``).
        self.pending = torch.zeros_like(scorer.score, dtype=torch.bool)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Tokens [b] chosen from ``logits`` [b, V] (the tokenizer's vocabulary)."""
        proposal = self.propose(logits)
        return self.take(proposal, proposal.scores.argmax(dim=-1))

    def propose(self, logits: torch.Tensor) -> Proposal:
        """The candidates of every row for ``logits`` [b, V], scored; nothing changes yet."""
        llm, candidates = logits.float().log_softmax(-1).topk(min(JOINT_CANDIDATES, logits.shape[-1]), dim=-1)
        labels, counts = self._labels(candidates)
        scores, states = self.scorer.extend(labels, counts)
        ctc = torch.where(self.stop[candidates], self.scorer.final()[:, None], scores) - self.scorer.score[:, None]
        # A row whose text its audio cannot hold (every candidate was impossible) lets the LLM decide.
        ctc = torch.where(self.scorer.score[:, None].isfinite(), ctc, 0.0)
        joint = (1 - self.weight) * llm.double() + self.weight * ctc
        if self.words is None:
            return Proposal(candidates, joint, scores, states)
        penalties, words = self.words.extend(candidates)
        return Proposal(candidates, joint - penalties, scores, states, words)

    def take(self, proposal: Proposal, choice: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Make candidate ``choice`` [b] of row ``rows`` [b] (default: each row's own) each row's
        next token, its CTC state and word-break flag following; returns the tokens [b]."""
        source = torch.arange(len(choice), device=choice.device) if rows is None else rows
        token = proposal.tokens[source, choice]
        self.scorer.advance(proposal.ctc_states, proposal.ctc_scores, choice, rows)
        if self.words is not None:
            self.words.take(proposal.lexicon_step, choice, source)
        letters = self.spelling.counts[token] > 0
        self.pending = torch.where(letters, self.spelling.trailing_break[token],
                                   self.pending[source] | self.spelling.has_break[token])
        return token

    def _labels(self, candidates: torch.Tensor):
        """(labels [b, k, L+1], counts [b, k]): each candidate's characters after the row's text,
        a space first where a break separates them from the row's last letter."""
        core, counts = self.spelling.labels[candidates], self.spelling.counts[candidates]
        spelled_any = self.scorer.last >= 0  # a space never starts the spelling
        space = (spelled_any[:, None] & (self.pending[:, None] | self.spelling.leading_break[candidates])
                 & (counts > 0))
        spaced = torch.cat([torch.full_like(core[..., :1], SPACE), core], dim=-1)
        unspaced = torch.cat([core, torch.zeros_like(core[..., :1])], dim=-1)
        return torch.where(space[..., None], spaced, unspaced), counts + space.long()


def steering_chooser(model, frames: torch.Tensor, feature_lengths: torch.Tensor, stop_ids, vocab_size: int,
                     weight: float, spelling: TokenSpelling, copies: int = 1,
                     lexicon: Lexicon | None = None) -> JointCTCChooser:
    """The chooser of rows whose audio the encoder turned into ``frames`` [n, T_enc, width]
    (``SALM.encode_audio``) from ``feature_lengths`` [n] mel frames, one audio per row, each row
    repeated ``copies`` times (beam search's hypotheses); ``lexicon``: a word list's penalty."""
    head = model.ctc_head
    log_probs = head(frames).float().log_softmax(-1).repeat_interleave(copies, dim=0)
    lengths = encoder_frames(feature_lengths).repeat_interleave(copies, dim=0)
    scorer = CTCPrefixScorer(log_probs, lengths, blank=head.out_features - 1)
    stop = torch.zeros(vocab_size, dtype=torch.bool, device=frames.device)
    stop[list(stop_ids)] = True
    return JointCTCChooser(scorer, spelling, weight, stop, lexicon)
