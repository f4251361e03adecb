"""On a GPU, bf16: speculative decoding equals greedy decoding at the verify step's width token for
token (inference/decode.py), at batch 1 and 8, over 200 utterances each, with the MTP drafter and
with oracle drafts (most tokens then come out of verify positions 1..D). Skips without CUDA.

    python -m pytest -q -s tests/gpu/test_decode_gpu.py
"""

import pytest
import torch

from inference_fixtures import exactness_run, short_prompt_batches, tiny_salm

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


@pytest.mark.parametrize('batch_size', [1, 8])
@pytest.mark.parametrize('oracle', [False, True])
def test_speculative_equals_greedy_of_its_width_in_bf16(small_bf16_salm, monkeypatch, batch_size, oracle):
    batches = short_prompt_batches(small_bf16_salm.cfg, 200, batch_size, seed=32, device='cuda')
    decoded, differing, accepted = exactness_run(small_bf16_salm, batches, DEPTHS, NEW_TOKENS,
                                                 monkeypatch=monkeypatch if oracle else None)
    print(f'batch {batch_size}, oracle drafts {oracle}: {decoded} utterances, {len(differing)} '
          f'differ, {accepted} drafts accepted')
    assert decoded == 200 and differing == []
    if oracle:
        assert accepted > 4 * decoded
