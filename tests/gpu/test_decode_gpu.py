"""On a GPU, bf16 (inference/decode.py, workspace.py). Skips without CUDA.

* Speculative decoding equals greedy decoding at the verify step's width token for token, at
  batch 1 and 8, over 200 utterances each: with the MTP drafter (eager and CUDA graphs) and with
  oracle drafts (most tokens then come out of verify positions 1..D).
* Steps replayed from CUDA graphs give the eager steps' outputs and acceptance counts; so do the
  encoding and prefill, replayed at padded shapes.
* With graphs, the host waits for the GPU once per step (the loop's check), whatever the mode.

    python -m pytest -q -s tests/gpu/test_decode_gpu.py
"""

from collections import Counter

import pytest
import torch

from megatron_salm_mtp.inference.decode import greedy_decode, speculative_decode
from megatron_salm_mtp.inference.workspace import WorkspacePool
from megatron_salm_mtp.training.host_syncs import recorded_host_syncs
from tests.support.inference_fixtures import EOS_ID, exactness_run, short_prompt_batches, tiny_salm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')

DEPTHS, NEW_TOKENS = 3, 24


@pytest.fixture(scope='module')
def small_bf16_salm(single_rank_parallel):
    """A random small SALM in bf16 with a realistic init (flat logits: near-ties are common)."""
    model = tiny_salm(seed=31, bf16=True, num_layers=4, hidden_size=256, ffn_hidden_size=704,
                      num_attention_heads=8, num_query_groups=4, init_method_std=0.02,
                      seq_length=256, num_mel_bins=80, encoder_hidden_size=256,
                      encoder_num_attention_heads=8)
    return model.cuda()


@pytest.fixture(scope='module')
def peaked_bf16_salm(single_rank_parallel):
    """A random tiny SALM in bf16 whose peaked logits repeat themselves: some drafts are accepted."""
    return tiny_salm(seed=21, bf16=True).cuda()


@pytest.mark.parametrize('batch_size', [1, 8])
@pytest.mark.parametrize('drafts', ['mtp', 'mtp_graphs', 'oracle'])
def test_speculative_equals_greedy_of_its_width_in_bf16(small_bf16_salm, monkeypatch, batch_size, drafts):
    batches = short_prompt_batches(small_bf16_salm.cfg, 200, batch_size, seed=32, device='cuda')
    oracle = drafts == 'oracle'  # a new oracle per batch: fresh workspaces, no pool
    pool = None if oracle else WorkspacePool(cuda_graphs=drafts == 'mtp_graphs')
    decoded, differing, accepted = exactness_run(small_bf16_salm, batches, DEPTHS, NEW_TOKENS,
                                                 workspaces=pool, monkeypatch=monkeypatch if oracle else None)
    print(f'batch {batch_size}, {drafts} drafts: {decoded} utterances, {len(differing)} differ, '
          f'{accepted} drafts accepted')
    assert decoded == 200 and differing == []
    if oracle:
        assert accepted > 4 * decoded


@pytest.mark.parametrize('batch_size', [1, 8])
def test_cuda_graph_replay_equals_eager(peaked_bf16_salm, batch_size):
    model, vocab = peaked_bf16_salm, peaked_bf16_salm.cfg.vocab_size
    eager, graphed = WorkspacePool(), WorkspacePool(cuda_graphs=True)
    accepted = 0
    for batch in short_prompt_batches(model.cfg, 48, batch_size, seed=34, device='cuda'):
        for width in (1, DEPTHS + 1):
            assert (greedy_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab, width, eager)[0]
                    == greedy_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab, width, graphed)[0])
        outputs, stats = speculative_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab, DEPTHS, eager)
        replayed, replayed_stats = speculative_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab,
                                                      DEPTHS, graphed)
        assert replayed == outputs
        assert [s.draft_accepts for s in replayed_stats] == [s.draft_accepts for s in stats]
        accepted += sum(sum(s.draft_accepts) for s in stats)
    assert accepted > 0  # the drafts, replayed, were compared through their acceptance
    captured = {name.split()[0] for ws in graphed.workspaces.values() for name in ws.graphs}
    assert captured == {'encode', 'prefill', 'greedy', 'speculative'}


@pytest.mark.parametrize('batch_size', [1, 8])
def test_one_host_sync_per_step_with_graphs(peaked_bf16_salm, batch_size):
    """Decoding 20 instead of 4 tokens per row (no stop id) adds exactly one sync per added step."""
    model, vocab = peaked_bf16_salm, peaked_bf16_salm.cfg.vocab_size
    pool = WorkspacePool(cuda_graphs=True)
    batch = next(short_prompt_batches(model.cfg, batch_size, batch_size, seed=35, device='cuda'))
    modes = {'greedy': lambda new: greedy_decode(model, batch, new, [], vocab, DEPTHS + 1, pool),
             'speculative': lambda new: speculative_decode(model, batch, new, [], vocab, DEPTHS, pool)}
    for name, decode in modes.items():
        decode(4)  # graphs captured
        counted = {}
        for new in (4, 20):
            sites = Counter()
            with recorded_host_syncs(sites):
                _, stats = decode(new)
            counted[new] = (sum(sites.values()), max(s.verify_steps for s in stats))
        print(f'batch {batch_size}, {name}: (syncs, steps) at 4 and 20 new tokens: {counted}')
        assert counted[20][0] - counted[4][0] == counted[20][1] - counted[4][1] > 0, counted
