"""Launches of the checkpoint harness (ckpt_harness.py) and the comparisons of what its ranks dump,
shared by the distributed checkpoint tests."""

import json
import os
import subprocess

import torch

from tests.support.harness import merge_shards
from tests.support.parallel_utils import write_config
from tests.support.process import child_env, rank_launcher, support_script

CKPT_HARNESS = support_script('ckpt_harness.py')
RESHARD_TOL = dict(rtol=1e-5, atol=1e-6)  # a step computed in another layout: fp32 sum order


def close_loss(x, y, rel=1e-6):
    """Same weights, same batch, another TP/PP layout: equal up to fp32 summation order."""
    return abs(x - y) <= rel * abs(y)


def launch(workdir, name, cfg, plan, nproc, dist_opt=False, expect_rc=0):
    """Run ``plan`` on ``nproc`` ranks; returns (per-rank records, the launch's output)."""
    out = os.path.join(workdir, name)
    os.makedirs(out)
    config = write_config(cfg, os.path.join(out, 'config.json'))
    with open(os.path.join(out, 'plan.json'), 'w') as f:
        json.dump(plan, f)
    launcher, rank_env = rank_launcher(nproc)
    env = child_env(PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **rank_env)
    cmd = launcher + [CKPT_HARNESS, '--config', config, '--plan', os.path.join(out, 'plan.json'),
                      '--out', out] + (['--dist-opt'] if dist_opt else [])
    with open(os.path.join(out, 'log.txt'), 'w+') as log:  # a file: no pipe for orphans to hold
        returncode = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=300).returncode
        log.seek(0)
        text = log.read()
    # the rank launcher exits 1 when a rank fails and reports the rank's status; a lone rank exits with it
    failed_as_expected = returncode == expect_rc if nproc == 1 else f'(exit status {expect_rc})' in text
    expected = returncode == 0 if not expect_rc else failed_as_expected
    if not expected:
        raise RuntimeError(f'{name}: exit {returncode}, expected {expect_rc}:\n{text[-8000:]}')
    return [torch.load(os.path.join(out, f'rank{r}.pt'), weights_only=False) for r in range(nproc)], text


def full_params(ranks, dump):
    """Parameters of a dump merged into TP=1/PP=1 tensors (DP rank 0; the MTP stage's embedding
    copy must equal the first stage's)."""
    merged = {}
    for pp in sorted({r['pp_rank'] for r in ranks}):
        stage = sorted((r for r in ranks if r['pp_rank'] == pp and r['dp_rank'] == 0),
                       key=lambda r: r['tp_rank'])
        for name, (_, spec) in stage[0][dump]['params'].items():
            tensor = merge_shards([r[dump]['params'][name][0] for r in stage], spec)
            if name in merged:
                assert torch.equal(merged[name], tensor), f'{name}: stage copies differ'
            merged[name] = tensor
    return merged


def assert_params(expected, actual, exact=True):
    assert set(expected) == set(actual), set(expected) ^ set(actual)
    for name in expected:
        if exact:
            assert torch.equal(expected[name], actual[name]), name
        else:
            torch.testing.assert_close(actual[name], expected[name], msg=name, **RESHARD_TOL)


def last_stage(ranks):
    return next(r for r in ranks if r['losses'] and r['losses'][0] == r['losses'][0])


def assert_changed(before, after):
    moved = sum(not torch.equal(before[n], after[n]) for n in before)
    assert moved > len(before) // 2, 'the step barely changed the weights: the test would see nothing'
