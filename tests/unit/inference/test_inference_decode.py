"""KV-cached greedy and MTP self-speculative decoding (inference/decode.py) on tiny SALMs, CPU.

Greedy over the cache must match a full forward per token; speculative decoding must match greedy
token for token: on random models (drafts rejected), on a briefly trained one (drafts mostly
accepted), and with drafts built to be accepted to a different depth in each row, whose
acceptance counts are known in advance (fp32). Over 200 utterances, in fp32 and bf16, it must
equal greedy decoding at the verify step's width bit for bit.
"""

import dataclasses

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

from megatron_salm_mtp.inference import workspace
from megatron_salm_mtp.inference.decode import PROMPT_BUCKET, graph_shapes, greedy_decode, speculative_decode
from megatron_salm_mtp.inference.drafter import MTPDrafter
from megatron_salm_mtp.inference.kv_cache import rotated
from megatron_salm_mtp.inference.workspace import WorkspacePool
from tests.support.inference_fixtures import (
    EOS_ID,
    PAD_ID,
    counting_batch,
    counting_salm,
    exactness_run,
    full_recompute_greedy,
    oracle_drafter,
    random_prompts,
    row_of,
    short_prompt_batches,
    tiny_salm,
)

FRAMES = [30, 57, 41]  # rows of different prompt lengths


@pytest.fixture(scope='module')
def random_model(single_rank_parallel):
    return tiny_salm(seed=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('rotary_dim', [16, 8])
def test_cache_rope_equals_core_rope_bit_for_bit(random_model, dtype, rotary_dim):
    """The KV cache rotates queries and keys itself, with cos and sin computed once per forward;
    the values must be core's (partial rotary included: the rest of the head passes through)."""
    gen = torch.Generator().manual_seed(9)
    t = torch.randn(4, 3, 2, 16, generator=gen).to(dtype)  # [q, b, heads, head dim]
    angles = torch.randn(4, 3, 1, rotary_dim, generator=gen) * 50
    config = dataclasses.replace(random_model.language_model.config, apply_rope_fusion=False)
    cos, sin = torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)
    assert torch.equal(rotated(t, cos, sin), apply_rotary_pos_emb(t, angles, config=config))


def test_cached_greedy_equals_full_recompute(random_model):
    batch = random_prompts(random_model.cfg, FRAMES, seed=1)
    vocab = random_model.cfg.vocab_size
    batched, _ = greedy_decode(random_model, batch, 10, [EOS_ID], vocab)
    for row in range(len(FRAMES)):
        alone, _ = greedy_decode(random_model, row_of(batch, row), 10, [EOS_ID], vocab)
        reference = full_recompute_greedy(random_model, row_of(batch, row), 10, [EOS_ID], vocab)
        assert batched[row] == alone[0] == reference, row


@pytest.mark.parametrize('depths', [1, 3])
def test_speculative_equals_greedy_on_random_models(single_rank_parallel, depths):
    for seed in (2, 3):
        model = tiny_salm(seed=seed)
        batch = random_prompts(model.cfg, FRAMES, seed=seed)
        vocab = model.cfg.vocab_size
        greedy, _ = greedy_decode(model, batch, 12, [EOS_ID], vocab)
        speculative, _ = speculative_decode(model, batch, 12, [EOS_ID], vocab, depths)
        assert speculative == greedy
        single, _ = speculative_decode(model, row_of(batch, 1), 12, [EOS_ID], vocab, depths)
        assert single[0] == greedy[1]


def test_shared_mtp_layer_drafts_deeper_than_trained(single_rank_parallel):
    model = tiny_salm(seed=4, mtp_num_layers=1, mtp_use_repeated_layer=True)
    batch = random_prompts(model.cfg, FRAMES, seed=4)
    vocab = model.cfg.vocab_size
    greedy, _ = greedy_decode(model, batch, 8, [EOS_ID], vocab)
    speculative, stats = speculative_decode(model, batch, 8, [EOS_ID], vocab, depths=3)
    assert speculative == greedy and len(stats[0].draft_attempts) == 3


@pytest.fixture(scope='module')
def trained_model(single_rank_parallel):
    return counting_salm()


def test_speculative_equals_greedy_after_brief_training(trained_model):
    model = trained_model
    _, batch = counting_batch(model.cfg, 6, seed=7)
    vocab = model.cfg.vocab_size
    greedy, _ = greedy_decode(model, batch, 16, [EOS_ID], vocab)
    speculative, stats = speculative_decode(model, batch, 16, [EOS_ID], vocab, depths=3)
    assert speculative == greedy
    assert sum(len(g) for g in greedy) > 3 * len(greedy)  # it learned to count, not to stop
    accepted = sum(sum(s.draft_accepts) for s in stats)
    assert accepted > 0, 'no draft accepted: the test would not exercise acceptance'
    for row in range(2):
        single, _ = speculative_decode(model, row_of(batch, row), 16, [EOS_ID], vocab, depths=3)
        assert single[0] == greedy[row]


def expected_counts(accept_per_step: int, budget: int, depths: int):
    """(verify steps, emitted tokens, attempts, accepts) of a row accepting the same number of
    drafts every step, its first token coming from the prefill. A draft for a position past the
    budget is not counted (the trunk's choice there is never emitted)."""
    emitted, steps, attempts, accepts = 1, 0, [0] * depths, [0] * depths
    while emitted < budget:
        steps += 1
        emittable = budget - emitted
        emitted += min(accept_per_step + 1, emittable)
        for depth in range(min(depths, emittable)):
            attempts[depth] += depth <= accept_per_step
            accepts[depth] += depth < accept_per_step
    return steps, budget - 1, attempts, accepts


def test_rows_accepting_different_lengths_match_greedy_and_are_counted(random_model, monkeypatch):
    depths, budget, vocab = 3, 11, random_model.cfg.vocab_size
    batch = random_prompts(random_model.cfg, FRAMES, seed=6)
    greedy, _ = greedy_decode(random_model, batch, budget, [], vocab)
    truth, _ = greedy_decode(random_model, batch, budget + depths + 1, [], vocab)
    wrong_depth = [0, 2, 1]  # row 0 accepts 3 drafts per step, row 1 one, row 2 none
    monkeypatch.setattr(workspace, 'MTPDrafter', oracle_drafter(truth, batch.lengths, wrong_depth))
    speculative, stats = speculative_decode(random_model, batch, budget, [], vocab, depths)
    assert speculative == greedy
    for row, wrong in enumerate(wrong_depth):
        accept = depths if wrong == 0 else wrong - 1
        steps, emitted, attempts, accepts = expected_counts(accept, budget, depths)
        assert (stats[row].verify_steps, stats[row].verify_emitted) == (steps, emitted), row
        assert (stats[row].draft_attempts, stats[row].draft_accepts) == (attempts, accepts), row


def test_stop_id_ends_each_row_where_greedy_does(random_model):
    batch = random_prompts(random_model.cfg, FRAMES, seed=8)
    vocab = random_model.cfg.vocab_size
    free, _ = greedy_decode(random_model, batch, 12, [], vocab)
    stop = free[2][5]
    cut = [row[:row.index(stop) + 1] if stop in row else row for row in free]
    assert len(cut[2]) <= 6
    greedy, _ = greedy_decode(random_model, batch, 12, [stop], vocab)
    speculative, _ = speculative_decode(random_model, batch, 12, [stop], vocab, 2)
    assert greedy == cut and speculative == greedy


@pytest.mark.parametrize('bf16', [False, True])
def test_speculative_equals_greedy_of_its_width_over_200_utterances(single_rank_parallel, bf16):
    """Token for token, fp32 and bf16: greedy at the verify step's width (decode.py's docstring).
    In bf16 the decoder before the per-position cache differed here in 7 of the 200."""
    model = tiny_salm(seed=21, bf16=bf16)
    decoded, differing, accepted = exactness_run(model, short_prompt_batches(model.cfg, 200, 8, 22),
                                                 depths=3, max_new_tokens=12)
    assert decoded >= 200 and differing == []
    assert accepted > 0  # drafts were accepted: verify steps emitted several tokens


def test_speculative_with_oracle_drafts_equals_greedy_in_bf16(single_rank_parallel, monkeypatch):
    """Drafts of greedy's own continuation, wrong at a different depth per row: most tokens come
    out of verify positions 1..D, and must still round exactly as greedy's position 0."""
    model = tiny_salm(seed=23, bf16=True)
    decoded, differing, accepted = exactness_run(model, short_prompt_batches(model.cfg, 40, 8, 24),
                                                 depths=3, max_new_tokens=12, monkeypatch=monkeypatch)
    assert decoded == 40 and differing == []
    assert accepted > 4 * decoded  # about half the tokens came from accepted drafts


def test_workspaces_reused_across_batches_decode_as_fresh_ones(random_model, monkeypatch):
    """One pool of workspaces for batches of different prompt lengths (one capacity bucket):
    outputs and every draft equal those of fresh workspaces (no state leaks between batches)."""
    drafts, real_draft = [], MTPDrafter.draft

    def recording_draft(self, *args):
        drafts.append(real_draft(self, *args))
        return drafts[-1]
    monkeypatch.setattr(MTPDrafter, 'draft', recording_draft)
    pool, vocab = WorkspacePool(), random_model.cfg.vocab_size
    for seed, frames in ((31, [30, 41, 35]), (32, [36, 29, 33]), (33, [40, 31, 38])):
        batch = random_prompts(random_model.cfg, frames, seed=seed)
        for decode_with in (lambda batch=batch, **kw: greedy_decode(random_model, batch, 12, [], vocab, width=4, **kw),
                            lambda batch=batch, **kw: speculative_decode(random_model, batch, 12, [], vocab, 3, **kw)):
            drafts.clear()
            fresh, _ = decode_with()
            fresh_drafts = list(drafts)
            drafts.clear()
            assert decode_with(workspaces=pool)[0] == fresh
            assert all(torch.equal(a, b) for a, b in zip(drafts, fresh_drafts))
            assert len(drafts) == len(fresh_drafts)
    assert len(pool.workspaces) == 2  # greedy's and speculative's, reused by every batch


@pytest.mark.parametrize('depths', [0, 3])
def test_graph_shapes_pad_to_buckets_and_decode_the_same_tokens(random_model, depths):
    """CUDA graphs replay the prefill at a few padded shapes (decode.graph_shapes): the padding is
    masked or overwritten, so every row decodes the same tokens, with the same acceptance."""
    cfg, vocab = random_model.cfg, random_model.cfg.vocab_size
    batch = dataclasses.replace(random_prompts(cfg, FRAMES, seed=9), pad_id=PAD_ID)
    prompt = batch.tokens.shape[1]
    padded = graph_shapes(batch, max_frames=2 * cfg.encoder_max_source_positions)
    assert padded.tokens.shape[1] % PROMPT_BUCKET == 0 and padded.tokens.shape[1] > prompt
    assert torch.equal(padded.tokens[:, :prompt], batch.tokens) and (padded.tokens[:, prompt:] == PAD_ID).all()
    assert padded.audio_features.shape[-1] == 64 and torch.equal(padded.audio_features[..., :57], batch.audio_features)
    assert not padded.audio_features[..., 57:].any()
    assert graph_shapes(batch, max_frames=60).audio_features.shape[-1] == 60  # never past the encoder's limit

    def decoded(b):
        if depths:
            outputs, stats = speculative_decode(random_model, b, 12, [], vocab, depths)
            return outputs, [s.draft_accepts for s in stats]
        return greedy_decode(random_model, b, 12, [], vocab)[0], None
    assert decoded(padded) == decoded(batch)
