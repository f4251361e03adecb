"""On a GPU: the training step's forward and backward make the host wait for the GPU nowhere in
the model (the audio splice, the placeholder check and the heads' row selection run on host-counted
facts; ``model/host_inputs.py``). Skips without CUDA."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from megatron_salm_mtp.training.host_syncs import recorded_host_syncs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')

SMALL_SALM = ['--num-layers', '4', '--hidden-size', '256', '--ffn-hidden-size', '704',
              '--num-attention-heads', '8', '--num-query-groups', '4', '--seq-length', '512',
              '--encoder-num-layers', '2', '--encoder-hidden-size', '256',
              '--encoder-num-attention-heads', '8', '--num-mel-bins', '80', '--bf16',
              '--micro-batch-size', '2', '--global-batch-size', '4', '--head-chunk-rows', '64']


def test_recorder_names_the_line_that_waits():
    sites = Counter()
    with recorded_host_syncs(sites):
        torch.ones(1, device='cuda').item()
    (site, calls), = sites.items()
    assert calls == 1 and 'test_host_syncs.py' in site and 'test_recorder_names_the_line_that_waits' in site


def test_training_step_waits_nowhere_in_the_model(tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=1', '--master-port=29531',
           '-m', 'megatron_salm_mtp.tools.bench_train', '--config', os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'),
           *SMALL_SALM, '--mtp-num-layers', '2', '--warmup-iters', '1', '--timed-iters', '1',
           '--list-host-syncs', '--json', str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout[-3000:])
    for r in json.loads(out.read_text())['results']:
        in_model = [site for site in r['host_syncs']['forward_backward'] if '/model/' in site]
        assert not in_model, r['host_syncs']
