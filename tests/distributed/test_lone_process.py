"""Process-group start-up: a world of one needs no TCP rendezvous (an in-memory store), so lone
processes side by side never compete for a port, inside sbatch/srun too; launched ranks still meet
at MASTER_ADDR:MASTER_PORT."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from megatron_salm_mtp.parallel.setup import _launched_world_size
from tests.support.process import ROOT

INIT = """
import sys
import torch
from megatron.core import parallel_state
from megatron_salm_mtp.parallel.setup import init_distributed
init_distributed()
parallel_state.initialize_model_parallel(1, 1)
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # NCCL on GPU, gloo on CPU
value = torch.tensor([float(torch.distributed.get_rank() + 1)], device=device)
torch.distributed.all_reduce(value)
# One write per line: two ranks share the pipe, and print's pieces can interleave.
sys.stdout.write(f'WORLD {torch.distributed.get_world_size()} SUM {int(value.item())}\\n')
sys.stdout.flush()
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_PORT')
           and not k.startswith('SLURM_')}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get('PYTHONPATH', ''), OMP_NUM_THREADS='1',
               PYTHONWARNINGS='ignore', **extra)
    return env


def test_concurrent_lone_processes_inside_slurm_all_start():
    """Four at once, as srun/sbatch leave them (SLURM_PROCID=0, WORLD_SIZE=1), with MASTER_PORT
    naming a port another process holds: a TCP rendezvous would fail (EADDRINUSE) in every one."""
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        env = _env(SLURM_PROCID='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=str(busy.getsockname()[1]))
        procs = [subprocess.Popen([sys.executable, '-c', INIT], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0 and 'WORLD 1 SUM 1' in out, out[-3000:]


@pytest.mark.skipif(torch.cuda.device_count() == 1, reason='two ranks need two GPUs (or none: gloo)')
def test_two_launched_ranks_meet_at_the_master_port():
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2',
           '--no-python', sys.executable, '-c', INIT]
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count('WORLD 2 SUM 3') == 2, done.stdout


def test_srun_tasks_take_rank_and_world_from_slurm(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.setenv(name, '')  # recorded, so that what the mapping writes is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '4')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    assert _launched_world_size() == 4
    assert (os.environ['RANK'], os.environ['LOCAL_RANK']) == ('3', '1')
    monkeypatch.setenv('WORLD_SIZE', '1')  # the launcher's own word wins
    monkeypatch.setenv('SLURM_PROCID', '0')
    assert _launched_world_size() == 1
