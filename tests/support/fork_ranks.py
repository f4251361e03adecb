"""Starts the ranks of a test's multi-process job forked from one interpreter that has already
imported torch, Megatron-Core and the training loop, with the variables torchrun gives its workers:

    python tests/support/fork_ranks.py --nproc-per-node=N SCRIPT|-m MODULE [args]

The suite launches a few hundred small jobs, and on a 2-core machine each rank's imports (torch's
compiler stack comes with Megatron-Core's fused kernels) cost more than its work; forked ranks pay
them once per job. The launcher hosts the ranks' rendezvous store, as torchrun's agent does, on a
port the system assigns once the ranks are forked: no port is picked early and lost to another job
in the meantime. Exit status as torchrun's: 0 when every rank exits 0; otherwise the other ranks
are terminated, the failed rank is named on stderr, and the status is 1. Tests of the launch
itself (signals to a torchrun process group, Slurm, sbatch) start the real torchrun.
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

# What the forked ranks share: torch, Megatron-Core and the training loop (the harness scripts and
# the train entry point import most of it).
import megatron.core.models.gpt  # noqa: F401
import torch

import megatron_salm_mtp.training.loop  # noqa: F401

GRACE_SECONDS = 10  # torchrun's wait between terminating and killing the surviving workers


@dataclass
class Job:
    nproc: int
    module: str | None  # -m MODULE, else a script: args[0]
    args: list


def parse(argv) -> Job:
    """``--nproc-per-node=N`` (torchrun's spelling), then ``SCRIPT [args]`` or ``-m MODULE [args]``;
    everything after the target is the rank's own."""
    usage = 'usage: fork_ranks.py --nproc-per-node=N SCRIPT|-m MODULE [args]'
    if not argv or not argv[0].startswith('--nproc-per-node='):
        raise SystemExit(usage)
    nproc, argv = int(argv[0].split('=', 1)[1]), argv[1:]
    if not argv or argv[:1] == ['-m'] and len(argv) < 2:
        raise SystemExit(usage)
    module = argv[1] if argv[0] == '-m' else None
    return Job(nproc, module, argv[2:] if module else argv)


def rank_environment(rank: int, nproc: int, port: int) -> dict:
    return dict(RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK='0', ROLE_RANK=str(rank),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), ROLE_WORLD_SIZE=str(nproc),
                MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE='True',
                TORCHELASTIC_RESTART_COUNT='0', TORCHELASTIC_MAX_RESTARTS='0', TORCHELASTIC_RUN_ID='fork_ranks')


def run_rank(job: Job, rank: int, port_pipe: int) -> int:
    """The body of one forked rank: the store's port from the launcher, its environment, then the
    script or module as __main__."""
    with os.fdopen(port_pipe) as pipe:
        port = int(pipe.readline())
    os.environ.update(rank_environment(rank, job.nproc, port))
    return run_as_main(job.module, job.args)


def run_as_main(module: str | None, args: list) -> int:
    """``python -m MODULE args`` or ``python SCRIPT args`` in this process (its sys.argv and
    sys.path[0] as the interpreter would set them); the exit status it would end with."""
    try:
        if module:
            sys.argv = [module] + list(args)
            sys.path[0] = os.getcwd()
            # As in a fresh interpreter, where `-m` finds the module not yet imported (runpy warns
            # otherwise, on stderr, which the one-line-error tests read).
            sys.modules.pop(module, None)
            runpy.run_module(module, run_name='__main__', alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name='__main__')
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 (reported as the interpreter would: traceback, status 1)
        traceback.print_exc()
        return 1
    return 0


def finish(code: int):
    """End this process as the interpreter's exit would, less the teardown of its modules (~2 s of
    freeing torch's on this machine, paid by every forked process otherwise): non-daemon threads
    joined, atexit handlers run (logging's flush among them), standard streams flushed."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait_all(pids: dict) -> int:
    """Wait for every rank; at the first failure terminate the rest. Returns the job's status."""
    failed = None
    while pids:
        pid, status = os.waitpid(-1, 0)
        rank = pids.pop(pid, None)
        if rank is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and failed is None:
            failed = (rank, code)
            stop_ranks(pids)
    if failed is None:
        return 0
    rank, code = failed
    how = f'signal {-code}' if code < 0 else f'exit status {code}'
    print(f'fork_ranks: rank {rank} failed ({how})', file=sys.stderr, flush=True)
    return 1


def stop_ranks(pids: dict) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while pids and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.05)
        else:
            pids.pop(pid, None)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def main() -> int:
    job = parse(sys.argv[1:])
    pids, port_pipes = {}, []
    for rank in range(job.nproc):
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the rank ends as a process of its own would (``finish``)
            for fd in port_pipes + [write_end]:  # the launcher's ends, the earlier ranks' among them
                os.close(fd)
            finish(run_rank(job, rank, read_end))
        os.close(read_end)
        pids[pid] = rank
        port_pipes.append(write_end)
    # Created after the forks: the store's server thread stays in this process alone.
    store = torch.distributed.TCPStore('127.0.0.1', 0, job.nproc, is_master=True, wait_for_workers=False)
    for write_end in port_pipes:
        try:
            with os.fdopen(write_end, 'w') as pipe:
                pipe.write(f'{store.port}\n')
        except BrokenPipeError:  # that rank is gone already: wait_all reports it
            pass
    return wait_all(pids)


if __name__ == '__main__':
    finish(main())
