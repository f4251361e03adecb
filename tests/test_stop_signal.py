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
import threading
import time

import pytest

from data_fixtures import make_train_valid_corpus
from train_utils import read_metrics, run_train, train_command

ITERS = 12
FLAGS = ['--num-workers', '2', '--train-iters', str(ITERS), '--log-interval', '1', '--seed', '5']


def _lines_of(proc, lines):
    for line in proc.stdout:
        lines.append(line)


def train_and_signal(corpus, extra, after_iteration: int, timeout: float = 300):
    """Run a 2-rank training in its own process group; once iteration ``after_iteration`` is
    logged, SIGTERM the whole group. Returns (exit status, output)."""
    cmd, env, root = train_command(corpus, extra, nproc=2)
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
