"""Greedy decoding steered by the CTC head (``decode.joint_ctc_decode``) on a GPU, bf16. Skips
without CUDA.

* A vanishing weight decodes as eager greedy decoding at width 1, token for token, over 64
  utterances at batch 8: the head's scores live on the GPU in fp64 beside the bf16 model.
* A real weight decodes every row within its token budget, and batched rows as each row alone
  (where greedy decoding does too: bf16 may round a near-tie otherwise at other shapes).

    python -m pytest -q -s tests/gpu/test_joint_ctc_gpu.py
"""

import pytest
import torch

from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from megatron_salm_mtp.inference.ctc_joint import token_spelling
from megatron_salm_mtp.inference.decode import greedy_decode, joint_ctc_decode
from tests.support.inference_fixtures import EOS_ID, row_of, short_prompt_batches, tiny_salm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')

NEW_TOKENS = 16


@pytest.fixture(scope='module')
def bf16_salm_with_ctc(single_rank_parallel):
    model = tiny_salm(seed=5, bf16=True, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters')
    model.ctc_head.weight.data.mul_(30.0)  # prefix scores that differ enough to steer
    return model.cuda()


def test_a_vanishing_weight_decodes_as_greedy_on_the_gpu(bf16_salm_with_ctc):
    model, vocab = bf16_salm_with_ctc, bf16_salm_with_ctc.cfg.vocab_size
    spelling = token_spelling(ByteTokenizer(), vocab, 'cuda')
    for batch in short_prompt_batches(model.cfg, 64, 8, seed=6, device='cuda'):
        greedy, _ = greedy_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab)
        joint, _ = joint_ctc_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab, 1e-12, spelling)
        assert joint == greedy


def test_a_real_weight_steers_within_budget_and_row_by_row(bf16_salm_with_ctc):
    model, vocab = bf16_salm_with_ctc, bf16_salm_with_ctc.cfg.vocab_size
    spelling = token_spelling(ByteTokenizer(), vocab, 'cuda')
    batch = next(short_prompt_batches(model.cfg, 8, 8, seed=7, device='cuda'))
    joint, stats = joint_ctc_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab, 0.5, spelling)
    greedy, _ = greedy_decode(model, batch, NEW_TOKENS, [EOS_ID], vocab)
    print(f'{sum(j != g for j, g in zip(joint, greedy))} of 8 rows steered away from greedy')
    assert all(1 <= len(row) <= NEW_TOKENS for row in joint) and len(stats) == 8
    # In bf16 a row alone (other GEMM shapes) may round a near-tie otherwise than in the batch:
    # compare the rows whose greedy output is the same alone and batched.
    for row in range(8):
        alone_greedy, _ = greedy_decode(model, row_of(batch, row), NEW_TOKENS, [EOS_ID], vocab)
        if alone_greedy[0] == greedy[row]:
            alone, _ = joint_ctc_decode(model, row_of(batch, row), NEW_TOKENS, [EOS_ID], vocab, 0.5, spelling)
            assert alone[0] == joint[row], row
