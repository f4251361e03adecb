"""A training process killed with SIGKILL leaves no helper behind.

The run (one lone process, saving every step, two DataLoader workers) starts in its own session,
so every process it starts, directly or not, carries its session id. It is killed while a
checkpoint is being written where megatron-core forks writer processes for that (0.16), else
right after a save. Then the dist_checkpointing Manager, the resource tracker, the workers and
any forked writer must be gone within seconds (they ignore SIGTERM, so nothing else ends them).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from megatron_salm_mtp.compat.mcore import MCORE_0_17
from tests.support.data_fixtures import make_train_valid_corpus
from tests.support.process import ROOT, free_port
from tests.support.train_utils import TINY_FLAGS


def _stat(pid):
    """(parent pid, session id, state) of a live process, or None."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[3]), fields[0]


def _cmdline(pid) -> str:
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def session_members(sid: int) -> dict:
    """{pid: (parent pid, command line)} of the session's processes that are not zombies."""
    members = {}
    for name in os.listdir('/proc'):
        stat = _stat(name) if name.isdigit() else None
        if stat and stat[1] == sid and stat[2] != 'Z':
            members[int(name)] = (stat[0], _cmdline(name))
    return members


def wait_for_line(lines, text: str, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, ''.join(lines)[-4000:]
        time.sleep(0.02)


def kill_while_writing(proc, workers, timeout: float = 20) -> bool:
    """SIGKILL ``proc`` as soon as it has a forked child that is not a DataLoader worker (a
    checkpoint writer); True if one was seen before ``timeout`` (after which it is killed anyway)."""
    deadline, main, writers = time.monotonic() + timeout, _cmdline(proc.pid), []
    while time.monotonic() < deadline:
        writers = [pid for pid, (parent, cmd) in session_members(proc.pid).items()
                   if parent == proc.pid and cmd == main and pid not in workers]
        if writers:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return bool(writers)


def test_sigkill_of_a_training_leaves_no_process_behind(tmp_path):
    corpus = make_train_valid_corpus(tmp_path / 'corpus', n=24)
    cmd = [sys.executable, '-m', 'megatron_salm_mtp.train', '--config', os.path.join(ROOT, 'configs', 'tiny_cpu.yaml'),
           '--train-manifest', os.path.join(corpus, 'train.jsonl')] + TINY_FLAGS + [
           '--num-workers', '2', '--train-iters', '1000', '--log-interval', '1',
           '--save', str(tmp_path / 'ckpt'), '--save-interval', '1']
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', MASTER_PORT=str(free_port()))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_for_line(lines, 'saved checkpoint', proc)
        before = session_members(proc.pid)
        workers = {pid for pid, (parent, cmd) in before.items() if parent == proc.pid and cmd == _cmdline(proc.pid)}
        helpers = [cmd for pid, (parent, cmd) in before.items() if pid != proc.pid]
        assert len(workers) == 2 and any('resource_tracker' in cmd for cmd in helpers) \
            and any('spawn_main' in cmd for cmd in helpers), before  # the Manager
        # 0.17+ writes with threads, not forked processes: killed right after a save there.
        writer_seen = kill_while_writing(proc, workers, timeout=0 if MCORE_0_17 else 20)
        assert writer_seen or MCORE_0_17
        deadline = time.monotonic() + 10
        while session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = session_members(proc.pid)
        assert not survivors, survivors
    finally:
        for pid in session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
