"""MTP drafting over per-depth KV caches (inference/drafter.py) against the reference: training's
MTP forward recomputed over the whole sequence at every draft (``recompute_drafts``), CPU fp32.

The drafter is driven as decoding drives it: after each draft every row accepts a random number
of its own drafts (0 .. D, each once in every D+1 steps, rows in their own order) followed by a
token other than its next draft (the trunk's correction), so that a cached state that read a
rejected draft would be stale; everything past a row's tokens and trunk states is random junk, as
rejected drafts leave it. The trunk states are those of the sequence so far.
"""

import pytest
import torch

from megatron_salm_mtp.inference.drafter import MTPDrafter
from tests.support.inference_fixtures import (
    counting_batch,
    counting_salm,
    random_prompts,
    recompute_drafts,
    row_of,
    tiny_salm,
    trunk_states,
)

FRAMES = [30, 57, 41]
TEXT_IDS = 250  # ids below the tiny models' special ids


def accepted_per_step(rows: int, depths: int, steps: int, gen) -> torch.Tensor:
    """[rows, steps] drafts accepted: every row accepts 0 .. D once in each D+1 steps."""
    rounds = steps // (depths + 1) + 1
    return torch.cat([torch.stack([torch.randperm(depths + 1, generator=gen) for _ in range(rows)])
                      for _ in range(rounds)], 1)


def check_drafts_against_recompute(model, batch, depths: int, steps: int, seed: int):
    """Drive an ``MTPDrafter`` for ``steps`` drafts and assert each equals the reference."""
    lm, vocab = model.language_model, model.cfg.vocab_size
    size, prompt = batch.tokens.shape
    capacity = prompt + (steps + 1) * (depths + 1) + 3 * depths + 1
    gen = torch.Generator().manual_seed(seed)
    sequences = torch.zeros(size, capacity, dtype=torch.long)
    sequences[:, :prompt] = batch.tokens
    lengths = batch.lengths + 1  # the prompt and the prefill's token
    sequences[torch.arange(size), batch.lengths] = torch.randint(0, TEXT_IDS, (size,), generator=gen)
    accepted = accepted_per_step(size, depths, steps, gen)
    drafter = MTPDrafter(lm, size, capacity, depths, 'cpu')
    for step in range(steps):
        states = trunk_states(model, sequences[:, :int(lengths.max())], batch)
        tokens = torch.randint(0, TEXT_IDS, (size, capacity), generator=gen)
        hidden = torch.randn(capacity, size, states.shape[-1], generator=gen)
        for row, length in enumerate(lengths.tolist()):
            tokens[row, :length] = sequences[row, :length]
            hidden[:length - 1, row] = states[:length - 1, row]
        if step == 0:  # what decoding does after the trunk's prefill
            drafter.prefill(tokens, hidden, int(lengths.max()))
        cached = drafter.draft(tokens, lengths, hidden, vocab)
        reference = recompute_drafts(lm, tokens, lengths, hidden, depths, vocab)
        assert torch.equal(cached, reference), (step, lengths.tolist(), cached, reference)
        for row, (length, taken) in enumerate(zip(lengths.tolist(), accepted[:, step].tolist())):
            shift = int(torch.randint(1, TEXT_IDS, (1,), generator=gen))
            correction = (int(cached[row, taken]) + shift) % TEXT_IDS if taken < depths else shift
            sequences[row, length:length + taken + 1] = torch.tensor(cached[row, :taken].tolist() + [correction])
        lengths = lengths + accepted[:, step] + 1


@pytest.mark.parametrize('rows', [1, 3])
def test_cached_drafts_equal_recompute_on_a_random_model(single_rank_parallel, rows):
    model = tiny_salm(seed=11)
    batch = random_prompts(model.cfg, FRAMES[:rows], seed=12)
    check_drafts_against_recompute(model, batch, depths=3, steps=8, seed=rows)

def test_cached_drafts_of_a_shared_layer_deeper_than_trained(single_rank_parallel):
    model = tiny_salm(seed=13, mtp_num_layers=1, mtp_use_repeated_layer=True)
    batch = random_prompts(model.cfg, FRAMES, seed=14)
    check_drafts_against_recompute(model, batch, depths=3, steps=6, seed=5)

@pytest.mark.parametrize('rows', [1, 3])
def test_cached_drafts_equal_recompute_on_a_trained_model(trained_model, rows):
    _, batch = counting_batch(trained_model.cfg, 3, seed=7)
    batch = batch if rows == 3 else row_of(batch, 0)
    check_drafts_against_recompute(trained_model, batch, depths=3, steps=6, seed=rows)

@pytest.fixture(scope='module')
def trained_model(single_rank_parallel):
    return counting_salm()
