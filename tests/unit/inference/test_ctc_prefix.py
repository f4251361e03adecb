"""CTC prefix scores (``inference/ctc_prefix.py``) against an independent reference: the sum over
every alignment path of a small audio, enumerated, of the paths whose collapsed labels start with
(prefix score) or equal (full score) the hypothesis; the full score against ``F.ctc_loss`` too.
Rows of different lengths, candidates of different label counts, repeated labels and the empty
hypothesis are all covered."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_salm_mtp.inference.ctc_greedy import best_path
from megatron_salm_mtp.inference.ctc_prefix import CTCPrefixScorer

CLASSES, BLANK = 4, 3  # labels 0-2, then the blank


def enumerated(log_probs: torch.Tensor, frames: int, labels: list[int]) -> tuple[float, float]:
    """(log prefix score, log full score) of ``labels`` by summing every path's probability."""
    prefix = full = 0.0
    for path in itertools.product(range(CLASSES), repeat=frames):
        p = math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
        collapsed = best_path(path, BLANK)
        if collapsed[:len(labels)] == labels:
            prefix += p
        if collapsed == labels:
            full += p
    return math.log(prefix) if prefix else -math.inf, math.log(full) if full else -math.inf


def posteriors(rows: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, frames, CLASSES, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)


@pytest.mark.parametrize('hypothesis', [[], [0], [1, 1], [0, 1, 0], [2, 2, 2], [1, 0, 2, 1]])
def test_prefix_and_full_scores_match_the_enumerated_paths(hypothesis):
    lengths = torch.tensor([6, 4])  # the second row padded past its 4 frames
    log_probs = posteriors(2, 6, seed=len(hypothesis))
    scorer = CTCPrefixScorer(log_probs, lengths, BLANK)
    for label in hypothesis:  # one label at a time, one candidate per row
        labels = torch.tensor(label).expand(2, 1, 1)
        scores, states = scorer.extend(labels, torch.ones(2, 1, dtype=torch.long))
        scorer.advance(states, scores, torch.zeros(2, dtype=torch.long))
    for row, frames in enumerate(lengths.tolist()):
        prefix, full = enumerated(log_probs[row], frames, hypothesis)
        assert float(scorer.score[row]) == pytest.approx(prefix if hypothesis else 0.0, abs=1e-9)
        assert float(scorer.final()[row]) == pytest.approx(full, abs=1e-9)


def test_the_full_score_is_ctc_losss_negative():
    log_probs, lengths, target = posteriors(1, 30, seed=7), torch.tensor([30]), [0, 2, 2, 1, 0]
    scorer = CTCPrefixScorer(log_probs, lengths, BLANK)
    scores, states = scorer.extend(torch.tensor(target).view(1, 1, -1), torch.tensor([[len(target)]]))
    scorer.advance(states, scores, torch.tensor([0]))
    loss = F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([target]), lengths, torch.tensor([len(target)]),
                      blank=BLANK, reduction='sum')
    assert float(scorer.final()[0]) == pytest.approx(-float(loss), rel=1e-9)


def test_candidates_of_several_labels_each_score_their_own_extension():
    """Candidates [b, k, L] with 0..L labels each: every score and state is that of extending the
    row's hypothesis by its own labels, and the one chosen becomes the hypothesis."""
    log_probs, lengths = posteriors(2, 5, seed=3), torch.tensor([5, 5])
    scorer = CTCPrefixScorer(log_probs, lengths, BLANK)
    first, states = scorer.extend(torch.tensor([[[1]], [[2]]]), torch.ones(2, 1, dtype=torch.long))
    scorer.advance(states, first, torch.zeros(2, dtype=torch.long))
    candidates = torch.tensor([[[0, 1, 0], [1, 2, 0], [2, 0, 0]], [[2, 2, 1], [0, 0, 0], [1, 0, 0]]])
    counts = torch.tensor([[3, 2, 0], [2, 0, 1]])
    scores, states = scorer.extend(candidates, counts)
    for row, start in enumerate((1, 2)):
        for k in range(3):
            labels = [start] + candidates[row, k, :counts[row, k]].tolist()
            assert float(scores[row, k]) == pytest.approx(enumerated(log_probs[row], 5, labels)[0], abs=1e-9)
    scorer.advance(states, scores, torch.tensor([1, 2]))
    assert float(scorer.final()[0]) == pytest.approx(enumerated(log_probs[0], 5, [1, 1, 2])[1], abs=1e-9)
    assert float(scorer.final()[1]) == pytest.approx(enumerated(log_probs[1], 5, [2, 1])[1], abs=1e-9)
