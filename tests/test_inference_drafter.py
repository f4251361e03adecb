"""MTP drafting over per-depth KV caches (inference/drafter.py) against the reference: training's
MTP forward recomputed over the whole sequence at every draft (``recompute_drafts``), CPU fp32.

The drafter is driven through decoding states directly: each row advances by a random number of
tokens per step (1 .. D+1: rows of one batch accept different numbers of drafts), and everything
past a row's verified tokens and trunk states is random junk, as rejected drafts leave it. A
draft that read a rejected token or kept a provisional state in its cache would differ.
"""

import pytest
import torch

from inference_fixtures import (counting_batch, counting_salm, random_prompts, recompute_drafts,
                                row_of, tiny_salm, trunk_states)
from megatron_salm_mtp.inference.decode import greedy_decode
from megatron_salm_mtp.inference.drafter import MTPDrafter

FRAMES = [30, 57, 41]

def continued(model, batch, new_tokens: int) -> torch.Tensor:
    """[b, P + new_tokens]: each row's prompt followed at once by its greedy continuation."""
    outputs, _ = greedy_decode(model, batch, new_tokens, [], model.cfg.vocab_size)
    sequences = torch.zeros(len(outputs), batch.tokens.shape[1] + new_tokens, dtype=torch.long)
    for row, output in enumerate(outputs):
        length = int(batch.lengths[row])
        sequences[row, :length] = batch.tokens[row, :length]
        sequences[row, length:length + len(output)] = torch.tensor(output)
    return sequences

def check_drafts_against_recompute(model, batch, depths: int, steps: int, seed: int):
    """Drive an ``MTPDrafter`` for ``steps`` drafts and assert each equals the reference."""
    lm, vocab = model.language_model, model.cfg.vocab_size
    sequences = continued(model, batch, steps * (depths + 1) + 1)
    states = trunk_states(model, sequences, batch)
    size, capacity = sequences.shape[0], sequences.shape[1] + 3 * depths + 1
    drafter = MTPDrafter(lm, size, capacity, depths, 'cpu')
    gen = torch.Generator().manual_seed(seed)
    # Each row accepts 0 .. D drafts once in every D+1 steps, in its own random order.
    advances = torch.cat([torch.stack([torch.randperm(depths + 1, generator=gen) + 1
                                       for _ in range(size)]) for _ in range(steps // (depths + 1) + 1)], 1)
    lengths = batch.lengths + 1  # the prompt and the prefill's token
    for step in range(steps):
        tokens = torch.randint(0, 250, (size, capacity), generator=gen)
        hidden = torch.randn(capacity, size, states.shape[-1], generator=gen)
        for row, length in enumerate(lengths.tolist()):
            tokens[row, :length] = sequences[row, :length]
            hidden[:length - 1, row] = states[:length - 1, row]
        cached = drafter.draft(tokens, lengths, hidden, vocab, int(lengths.max()))
        reference = recompute_drafts(lm, tokens, lengths, hidden, depths, vocab)
        assert torch.equal(cached, reference), (step, lengths.tolist(), cached, reference)
        lengths = lengths + advances[:, step]

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
