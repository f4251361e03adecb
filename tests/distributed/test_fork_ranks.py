"""The suite's rank launcher (tests/support/fork_ranks.py) behaves as torchrun does where the tests
rely on it: every rank gets torchrun's variables and meets the others in one gloo group, and one
failed rank fails the job at once, named, with the other ranks stopped."""

import subprocess
import time

from tests.support.process import child_env, rank_launcher

MEET = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group('gloo')
total = torch.tensor([float(os.environ['RANK'])])
dist.all_reduce(total)
line = (f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} local {os.environ['LOCAL_RANK']} "
        f"argv {sys.argv[1:]} sum {total.item():.0f}\\n")
os.write(1, line.encode())  # one write: the ranks share the pipe
dist.destroy_process_group()
"""

FAIL_ONE = """
import os, sys, time
if os.environ['RANK'] == '1':
    sys.exit(3)
time.sleep(120)
"""


def run(tmp_path, body, nproc, *args):
    script = tmp_path / 'rank.py'
    script.write_text(body)
    launcher, env = rank_launcher(nproc)
    return subprocess.run(launcher + [str(script), *args], env=child_env(**env), capture_output=True,
                          text=True, timeout=180)


def test_ranks_get_torchrun_variables_and_meet(tmp_path):
    done = run(tmp_path, MEET, 3, '--flag', 'x')
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith('rank '))
    assert lines == [f"rank {r} of 3 local {r} argv ['--flag', 'x'] sum 3" for r in range(3)]


def test_a_failed_rank_fails_the_job_at_once_and_is_named(tmp_path):
    start = time.monotonic()
    done = run(tmp_path, FAIL_ONE, 2)
    assert done.returncode == 1
    assert 'rank 1 failed (exit status 3)' in done.stderr
    assert time.monotonic() - start < 100, 'the other rank was left to finish its sleep'
