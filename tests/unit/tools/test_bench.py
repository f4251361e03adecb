"""The training benchmark command on CPU: the figures it prints and writes, and the warning that
flags a GPU shared with another process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_salm_mtp.config import SALMConfig
from megatron_salm_mtp.tools.bench_train import FOREIGN_MEMORY_WARN_GB, busy_microseconds, foreign_memory_warning
from megatron_salm_mtp.training.flops import attended_pairs, batch_flops
from tests.support.process import ROOT, free_port, rank_launcher
from tests.support.train_utils import TINY_FLAGS


def test_bench_prints_and_writes_figures_with_and_without_mtp(tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2', f'--master-port={free_port()}',
           '-m', 'megatron_salm_mtp.tools.bench_train', '--config', os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'),
           *TINY_FLAGS, '--mtp-num-layers', '2', '--tensor-model-parallel-size', '2',
           '--warmup-iters', '1', '--timed-iters', '2', '--peak-tflops', '1', '--list-host-syncs',
           '--json', str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'device: 2 x CPU | TP=2 PP=1' in result.stdout
    assert 'MTP overhead per depth:' in result.stdout and 'WARNING' not in result.stdout
    report = json.loads(out.read_text())
    assert report['foreign_memory_gb_per_rank'] == [0.0, 0.0]
    base, mtp = report['results']
    assert (base['mtp_depths'], mtp['mtp_depths']) == (0, 2)
    for r in (base, mtp):
        assert r['step_ms'] > 0 and r['tokens_per_s'] > 0
        assert r['mfu'] == pytest.approx(r['tflops_per_gpu'])  # --peak-tflops 1
        losses = r['lm_loss_per_step']  # the same batches each step: the loss falls
        assert len(losses) == 3 and losses[-1] < losses[0]
    assert mtp['tflops_per_gpu'] * mtp['step_ms'] > base['tflops_per_gpu'] * base['step_ms']  # MTP adds FLOPs
    # CPU: the audit runs and finds nothing to record (tests/gpu/test_host_syncs.py checks a GPU)
    assert mtp['host_syncs'] == {'forward_backward': {}, 'optimizer': {}}
    assert 'host syncs, D=2, forward_backward: 0' in result.stdout


def test_foreign_memory_warning_names_the_busy_ranks():
    assert foreign_memory_warning([0.0, 0.3]) == ''
    line = foreign_memory_warning([0.5, FOREIGN_MEMORY_WARN_GB + 15.0])
    assert line.startswith('WARNING: other processes hold GPU memory (rank 1: 19.0 GB)')


def test_device_busy_time_counts_overlapping_intervals_once():
    """Kernels of two streams overlap, and a kernel may be recorded twice: the busy time is the
    union of their intervals, never above the wall time."""
    assert busy_microseconds([]) == 0
    assert busy_microseconds([(0, 10), (20, 25)]) == 15
    assert busy_microseconds([(20, 25), (0, 10), (5, 12), (2, 3)]) == 17  # unsorted, overlapping, nested
    assert busy_microseconds([(0, 10), (0, 10), (10, 11)]) == 11  # the same kernel twice, then adjacent


def test_bench_compares_the_fused_cross_entropy_head(tmp_path):
    """--compare-cross-entropy-fusion: each configuration again with the fused linear + CE head,
    from the same weights on the same batches, so every step's main loss agrees."""
    out = tmp_path / 'bench.json'
    launcher, rank_env = rank_launcher(1)
    cmd = launcher + ['-m', 'megatron_salm_mtp.tools.bench_train', '--config',
                      os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'), *TINY_FLAGS, '--mtp-num-layers', '1',
                      '--head-chunk-rows', '16', '--compare-cross-entropy-fusion', '--warmup-iters', '1',
                      '--timed-iters', '2', '--peak-tflops', '1', '--json', str(out),
                      '--profile-dir', str(tmp_path / 'profile')]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads(out.read_text())['results']
    assert [(r['head'], r['mtp_depths']) for r in runs] == [
        ('row chunks 16', 0), ('row chunks 16', 1), ('fused linear CE', 0), ('fused linear CE', 1)]
    for plain, fused in zip(runs[:2], runs[2:]):
        assert fused['lm_loss_per_step'] == pytest.approx(plain['lm_loss_per_step'], rel=1e-5)
        assert fused['lm_loss_per_step'][-1] < fused['lm_loss_per_step'][0]
    assert 'fused linear CE vs row chunks 16, D=1: step time' in result.stdout
    assert result.stdout.count('MTP overhead per depth:') == 2
    # one profile per configuration, none overwriting another; no GPU, so no device time
    profiles = sorted(os.listdir(tmp_path / 'profile'))
    assert profiles == ['mtp0_fused_ce_rank0.txt', 'mtp0_rank0.txt', 'mtp1_fused_ce_rank0.txt', 'mtp1_rank0.txt']
    assert 'device busy 0.0 ms (0%)' in (tmp_path / 'profile' / 'mtp1_rank0.txt').read_text()


def test_bench_compares_padded_and_packed_rows_of_a_length_mix(tmp_path):
    """--compare-packing: the same length mix one utterance per row, then packed; packed rows carry
    more useful (non-padding) tokens per step, and both layouts train (the loss falls)."""
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=1', f'--master-port={free_port()}',
           '-m', 'megatron_salm_mtp.tools.bench_train', '--config', os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'),
           *TINY_FLAGS, '--seq-length', '256', '--max-duration', '10', '--mtp-num-layers', '0',
           '--compare-packing', '--warmup-iters', '1', '--timed-iters', '2', '--peak-tflops', '1', '--json', str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads(out.read_text())['results']
    assert [(r['rows'], r['mtp_depths']) for r in runs] == [('padded', 0), ('packed', 0)]
    padded, packed = runs
    useful = [r['useful_tokens_per_s'] * r['step_ms'] / 1000 for r in runs]  # per step
    assert useful[0] < 8 * 256 and useful[1] > 1.3 * useful[0], useful
    assert packed['audios'] > padded['audios'] == 8
    for r in runs:
        assert r['lm_loss_per_step'][-1] < r['lm_loss_per_step'][0]
    assert 'packed vs padded, logits kept, D=0: useful tokens/s x' in result.stdout


def test_packed_attention_is_counted_within_each_utterance():
    """MFU's attention term (training/flops.py): a packed row attends within its utterances and
    its padding tail, an unpacked row over all of it."""
    cfg = SALMConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, mtp_num_layers=1,
                     vocab_size=300)
    packed = {'tokens': torch.zeros(2, 10), 'cu_seqlens': torch.tensor([[0, 4, 9, 10], [0, 6, 10, 10]])}
    assert attended_pairs([packed]) == 16 + 25 + 1 + 36 + 16
    assert attended_pairs([{'tokens': torch.zeros(3, 10)}]) == 300
    one_span = batch_flops(cfg, 2, 10, 0, 1, 5)
    assert batch_flops(cfg, 2, 10, 0, 1, 5, attended_pairs=200) == one_span
    per_pair = 3 * (2 + 1) * 2 * 64  # (layers + MTP depths) x QK^T and AV, forward and backward
    assert one_span - batch_flops(cfg, 2, 10, 0, 1, 5, attended_pairs=94) == per_pair * (200 - 94)
