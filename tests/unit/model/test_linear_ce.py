"""The fused linear + cross-entropy head (model/linear_ce.py) against plain torch over the whole
logits tensor: per-row loss, top-1 hits and the gradients of the hidden states and the head weight,
with rows weighted unequally and some ignored (weight 0), on one rank and with the vocabulary split
over two (gloo). The model-level parity (main and MTP heads, TP=1/2) is in test_parallel_gradients.py."""

import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from megatron_salm_mtp.model.linear_ce import TorchChunks, linear_cross_entropy
from tests.support.linear_ce_ranks import (
    ROWS,
    SMALL_CHUNKS,
    assert_close,
    assert_no_rows_give_zero_gradients,
    assert_same,
    fused,
    problem,
    reference,
    tensor_parallel_rank,
)
from tests.support.process import child_env, free_port


def test_one_rank_matches_the_full_logits():
    expected = reference(*problem())
    assert expected[1].sum() >= ROWS // 3  # the hits are exercised
    assert_same(expected, fused(*problem()))
    assert_same(expected, fused(*problem(), backend=TorchChunks()))  # one chunk


def test_no_rows():
    assert_no_rows_give_zero_gradients(SMALL_CHUNKS)


def test_frozen_head_weight_still_gives_the_hidden_gradient():
    hidden, weight, targets, row_weights = problem(1)
    expected = reference(hidden, weight, targets, row_weights)
    hidden = hidden.clone().requires_grad_()
    loss, _ = linear_cross_entropy(hidden, weight, targets, None, SMALL_CHUNKS)
    (loss * row_weights).sum().backward()
    assert_close('grad hidden', expected[2], hidden.grad)


def test_no_grad_gives_the_loss():
    hidden, weight, targets, row_weights = problem(2)
    with torch.no_grad():
        loss, hits = linear_cross_entropy(hidden, weight, targets, None, SMALL_CHUNKS)
    expected = reference(hidden, weight, targets, row_weights)
    assert_same(expected[:2], [loss, hits])


def test_vocabulary_split_over_two_ranks_matches_the_full_logits(tmp_path):
    mp.spawn(tensor_parallel_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    expected = reference(*problem(3))
    for loss, hits, grad_hidden, _ in ranks:  # every rank holds the whole rows' results
        assert_same(expected[:3], [loss, hits, grad_hidden])
    assert_close('grad weight', expected[3], torch.cat([r[3] for r in ranks]))  # shards in rank order


TRITON_CHECK = """
from megatron_salm_mtp.model.linear_ce_triton import TritonKernels
from tests.support.linear_ce_ranks import assert_same, fused, problem, reference
kernels = TritonKernels(block_m=16, block_n=32, block_k=16, dlogits_chunk_elements=37 * 64)
assert_same(reference(*problem()), fused(*problem(), backend=kernels))
print('triton kernels agree')
"""


def test_triton_kernels_in_the_interpreter_match_the_full_logits():
    """The kernels' maths on CPU (``TRITON_INTERPRET=1``); tests/gpu/test_linear_ce_gpu.py runs
    them compiled. Skipped where triton is not installed (CPU builds of torch)."""
    pytest.importorskip('triton')
    env = child_env(TRITON_INTERPRET='1', PYTHONWARNINGS='ignore')
    result = subprocess.run([sys.executable, '-c', TRITON_CHECK], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'triton kernels agree' in result.stdout
