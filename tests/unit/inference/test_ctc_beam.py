"""Beam search steered by the CTC head (``inference/ctc_beam.py``): a beam of one is the steered
greedy decoder, utterances of one batch decode as each alone, the same search run by full forwards
(no KV cache, no reordered rows) chooses the same transcripts with the same scores, and a beam wide
enough to hold every path finds the best-scoring transcript of an exhaustive search."""

import pytest
import torch

from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from megatron_salm_mtp.inference.ctc_beam import joint_ctc_beam_decode
from megatron_salm_mtp.inference.ctc_joint import steering_chooser, token_spelling
from megatron_salm_mtp.inference.decode import joint_ctc_decode
from megatron_salm_mtp.inference.lexicon import build_lexicon
from tests.support.inference_fixtures import EOS_ID, letter_writing_salm, random_prompts, row_of, tiny_salm

WEIGHT = 0.7


@pytest.fixture(scope='module')
def steered_model(single_rank_parallel):
    model = tiny_salm(seed=2, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    model.ctc_head.weight.data.mul_(30.0)  # a head whose prefix scores differ enough to steer
    return model, token_spelling(ByteTokenizer(), model.cfg.vocab_size, 'cpu')


def test_a_beam_of_one_is_the_steered_greedy_decoder(steered_model):
    model, spelling = steered_model
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    vocab = model.cfg.vocab_size
    greedy, greedy_stats = joint_ctc_decode(model, batch, 12, [EOS_ID], vocab, WEIGHT, spelling)
    beam, beam_stats = joint_ctc_beam_decode(model, batch, 12, [EOS_ID], vocab, WEIGHT, spelling, 1)
    assert beam == greedy
    assert [s.verify_emitted for s in beam_stats] == [s.verify_emitted for s in greedy_stats]


def test_utterances_of_a_batch_decode_as_each_alone(steered_model):
    model, spelling = steered_model
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    vocab = model.cfg.vocab_size
    beams, _ = joint_ctc_beam_decode(model, batch, 12, [EOS_ID], vocab, WEIGHT, spelling, 3)
    greedy, _ = joint_ctc_decode(model, batch, 12, [EOS_ID], vocab, WEIGHT, spelling)
    assert beams != greedy  # the wider search chose otherwise somewhere
    for row in range(3):
        alone, _ = joint_ctc_beam_decode(model, row_of(batch, row), 12, [EOS_ID], vocab, WEIGHT, spelling, 3)
        assert alone[0] == beams[row], row


@torch.no_grad()
def replay(model, batch, spelling, tokens: list[int], lexicon=None):
    """(joint score of ``tokens``, the next step's candidates [k], their step scores [k]), the
    steered decoder's scores taken token by token, each step's logits from a full forward of the
    prompt and the tokens before it (no KV cache)."""
    vocab = model.cfg.vocab_size
    frames = model.audio_encoder(batch.audio_features, batch.audio_feature_lengths)
    chooser = steering_chooser(model, frames, batch.audio_feature_lengths, [EOS_ID], vocab, WEIGHT, spelling,
                               lexicon=lexicon)
    ids, total = batch.tokens[0].tolist(), 0.0
    for step in range(len(tokens) + 1):
        logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], audio_features=batch.audio_features,
                       audio_feature_lengths=batch.audio_feature_lengths)[0, -1:, :vocab]
        proposal = chooser.propose(logits)
        candidates = proposal.tokens[0].tolist()
        if step == len(tokens):
            return total, candidates, proposal.scores[0].tolist()
        choice = candidates.index(tokens[step])
        total += float(proposal.scores[0, choice])
        chooser.take(proposal, torch.tensor([choice]))
        ids.append(tokens[step])


def reference_beam(model, batch, spelling, budget: int, size: int, lexicon=None) -> tuple[list[int], float]:
    """(best transcript, its score) of the module's beam search run by ``replay``: the B best of
    every live hypothesis' candidates and the finished ones, until a finished one scores at least
    as well as every live one."""
    beams = [((), 0.0, False)]  # (tokens, score, finished)
    while True:
        pool = [beam for beam in beams if beam[2]]
        for tokens, score, finished in beams:
            if not finished:
                _, candidates, steps = replay(model, batch, spelling, list(tokens), lexicon)
                pool += [(tokens + (token,), score + step, token == EOS_ID or len(tokens) + 1 == budget)
                         for token, step in zip(candidates, steps)]
        beams = sorted(pool, key=lambda beam: -beam[1])[:size]
        finished = [beam[1] for beam in beams if beam[2]]
        live = [beam[1] for beam in beams if not beam[2]]
        if finished and (not live or max(finished) >= max(live)):
            best = max((beam for beam in beams if beam[2]), key=lambda beam: beam[1])
            return list(best[0]), best[1]


@pytest.mark.parametrize('size, listed', [(3, False), (5, False), (3, True)])
def test_the_beam_search_of_full_forwards_chooses_alike(steered_model, size, listed):
    """With a word list too: its state follows each hypothesis through the beam's row reordering."""
    model, spelling = steered_model
    vocab = model.cfg.vocab_size
    batch = random_prompts(model.cfg, [30, 57, 41], seed=3)
    lexicon = None
    if listed:  # its rows start with 'y' and go on with 'd' or 'x': a list of 'y' alone bends them
        model = letter_writing_salm()
        lexicon = build_lexicon({'y'}, ByteTokenizer(), vocab, 'cpu').with_penalty(50.0)
    found, _ = joint_ctc_beam_decode(model, batch, 8, [EOS_ID], vocab, WEIGHT, spelling, size, lexicon=lexicon)
    if listed:
        assert found != joint_ctc_beam_decode(model, batch, 8, [EOS_ID], vocab, WEIGHT, spelling, size)[0]
    for row in range(3):
        expected, score = reference_beam(model, row_of(batch, row), spelling, 8, size, lexicon)
        assert found[row] == expected, row
        assert replay(model, row_of(batch, row), spelling, found[row], lexicon)[0] == pytest.approx(score, rel=1e-9)


def every_path(model, batch, spelling, budget: int) -> dict[tuple, float]:
    """Joint score of every transcript the steered candidates allow within ``budget`` tokens."""
    scores = {}

    def visit(tokens):
        total, candidates, _ = replay(model, batch, spelling, tokens)
        if tokens and (tokens[-1] == EOS_ID or len(tokens) == budget):
            scores[tuple(tokens)] = total
            return
        for token in candidates:
            visit(tokens + [token])

    visit([])
    return scores


def test_a_beam_holding_every_path_finds_the_best_transcript(steered_model):
    model, spelling = steered_model
    batch = random_prompts(model.cfg, [45], seed=5)
    paths = every_path(model, batch, spelling, budget=2)
    assert len(paths) > 8  # two steps of candidates
    found, _ = joint_ctc_beam_decode(model, batch, 2, [EOS_ID], model.cfg.vocab_size, WEIGHT, spelling,
                                     beam_size=len(paths))
    best = max(paths.values())
    assert paths[tuple(found[0])] == pytest.approx(best, rel=1e-9, abs=1e-9)
    greedy, _ = joint_ctc_decode(model, batch, 2, [EOS_ID], model.cfg.vocab_size, WEIGHT, spelling)
    assert paths[tuple(greedy[0])] <= best


def test_a_beam_size_below_one_is_refused(steered_model):
    model, spelling = steered_model
    batch = random_prompts(model.cfg, [30], seed=1)
    with pytest.raises(ValueError, match='beam size 0: must be >= 1'):
        joint_ctc_beam_decode(model, batch, 4, [EOS_ID], model.cfg.vocab_size, WEIGHT, spelling, 0)
