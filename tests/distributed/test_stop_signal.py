"""SIGTERM to a whole torchrun process group (what a job scheduler or `kill -- -PGID` sends):
launcher, both ranks and their DataLoader workers get it at once.

The ranks must save at the next step boundary and exit; the workers must survive the signal (a
worker killed mid-step used to crash its rank before the boundary). Resuming from that
checkpoint then reproduces the uninterrupted run's losses exactly.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.data_fixtures import make_corpus, make_train_valid_corpus
from tests.support.process import ROOT
from tests.support.train_utils import read_metrics, run_train, train_command

ITERS = 12
FLAGS = ['--num-workers', '2', '--train-iters', str(ITERS), '--log-interval', '1', '--seed', '5']


def _lines_of(proc, lines):
    for line in proc.stdout:
        lines.append(line)


def train_and_signal(corpus, extra, after_iteration: int, timeout: float = 300):
    """Run a 2-rank training in its own process group; once iteration ``after_iteration`` is
    logged, SIGTERM the whole group. Returns (exit status, output)."""
    cmd, env, root = train_command(corpus, extra, nproc=2, torchrun=True)
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    reader = threading.Thread(target=_lines_of, args=(proc, lines), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not any(re.match(rf'iteration\s+{after_iteration}/', line) for line in lines):
            assert proc.poll() is None, ''.join(lines)[-4000:]
            assert time.monotonic() < deadline, ''.join(lines)[-4000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    return proc.returncode, ''.join(lines)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return make_train_valid_corpus(tmp_path_factory.mktemp('signal') / 'corpus', n=24)


def test_sigterm_to_the_process_group_saves_and_the_resume_is_exact(corpus, tmp_path):
    ckpt, logs = str(tmp_path / 'ckpt'), {name: str(tmp_path / name) for name in ('full', 'first', 'resumed')}
    _, output = train_and_signal(corpus, FLAGS + ['--save', ckpt, '--log-dir', logs['first']], after_iteration=2)
    assert 'killed by signal' not in output, output[-3000:]
    stopped = re.search(r'stopping at iteration (\d+) \(signal\)', output)
    assert stopped, output[-4000:]
    saved = int(stopped.group(1))
    assert 2 <= saved < ITERS
    with open(os.path.join(ckpt, 'latest_checkpointed_iteration.txt')) as f:
        assert int(f.read()) == saved

    run_train(corpus, FLAGS + ['--load', ckpt, '--log-dir', logs['resumed']], nproc=2)
    run_train(corpus, FLAGS + ['--log-dir', logs['full']], nproc=2)
    full, first, resumed = ({r['iteration']: r for r in read_metrics(logs[name])}
                            for name in ('full', 'first', 'resumed'))
    assert sorted(first) == list(range(1, saved + 1)) and sorted(resumed) == list(range(saved + 1, ITERS + 1))
    for it in range(1, ITERS + 1):
        record = first.get(it) or resumed[it]
        for key in ('lm loss', 'mtp_1 loss', 'consumed_samples', 'lr'):
            assert record[key] == full[it][key], (it, key)


# Two workers, SIGTERM to each after the first batch, the next batch, then an uncaught error (one
# utterance per row: the small corpus gives several batches).
DEAF_WORKERS = """
import multiprocessing, os, signal, sys, time
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
loader = build_dataloader(DataConfig(micro_batch_size=2, global_batch_size=2, num_workers=2, pack_sequences=False),
                          [sys.argv[1]])
batches = iter(loader)
next(batches)
workers = multiprocessing.active_children()
for worker in workers:
    os.kill(worker.pid, signal.SIGTERM)
time.sleep(1)
next(batches)
print('workers alive after SIGTERM:', sum(w.is_alive() for w in workers), 'of', len(workers), flush=True)
raise RuntimeError('boom')
"""


ORPHANED_ITERATOR = """
import gc, sys
from megatron_salm_mtp.data.loader import DataConfig, build_dataloader
loader = build_dataloader(DataConfig(micro_batch_size=2, global_batch_size=2, num_workers=2, pack_sequences=False),
                          [sys.argv[1]])
workers = iter(loader._loader)  # torch's iterator outlives its DataLoader, as a test's frames can
next(workers)
del loader
gc.collect()
print('loader gone, workers alive', flush=True)
"""


@pytest.mark.parametrize('script', [DEAF_WORKERS, ORPHANED_ITERATOR], ids=['error', 'orphaned-iterator'])
def test_workers_ignore_sigterm_and_still_end_with_their_process(tmp_path, script):
    """Deaf to SIGTERM, workers must not keep a process from exiting: multiprocessing's exit
    handler ends its children with SIGTERM and waits (the timeout only guards a hang)."""
    result = subprocess.run([sys.executable, '-c', script, make_corpus(tmp_path)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1'))
    if script is ORPHANED_ITERATOR:
        assert result.returncode == 0 and 'loader gone, workers alive' in result.stdout, result.stderr[-3000:]
        return
    assert 'workers alive after SIGTERM: 2 of 2' in result.stdout, result.stdout + result.stderr[-3000:]
    assert result.returncode == 1 and 'RuntimeError: boom' in result.stderr, result.stderr[-3000:]
