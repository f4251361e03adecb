"""Helpers for end-to-end tests of ``python -m megatron_salm_mtp.train``."""

import json
import os
import subprocess

from tests.support.process import ROOT, rank_launcher

TINY_FLAGS = ['--num-layers', '2', '--hidden-size', '64', '--ffn-hidden-size', '176',
              '--encoder-num-layers', '1', '--encoder-hidden-size', '64', '--seq-length', '128',
              '--micro-batch-size', '4', '--global-batch-size', '8', '--lr', '3e-3',
              '--lr-warmup-iters', '2', '--log-interval', '2', '--eval-interval', '0', '--num-workers', '0']


def train_command(corpus: str, extra, nproc: int = 1, torchrun: bool = False):
    """(command, environment, working folder) of a training of ``nproc`` ranks on the tiny
    configuration (``torchrun``: launched by the real torchrun, see ``rank_launcher``)."""
    root = ROOT
    launcher, rank_env = rank_launcher(nproc, torchrun)
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    cmd = launcher + ['-m', 'megatron_salm_mtp.train', '--config', os.path.join(root, 'configs', 'tiny_cpu.yaml'),
                      '--train-manifest', os.path.join(corpus, 'train.jsonl'),
                      '--valid-manifest', os.path.join(corpus, 'valid.jsonl')] + TINY_FLAGS + list(extra)
    return cmd, env, root


def run_train(corpus: str, extra, nproc: int = 1, timeout: int = 600, check: bool = True):
    cmd, env, root = train_command(corpus, extra, nproc)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def read_metrics(log_dir: str, split: str = 'train'):
    with open(os.path.join(log_dir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['split'] == split]
