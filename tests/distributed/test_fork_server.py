"""The suite's fork server (tests/support/fork_server.py) runs a launch as ``python`` would: the
client's arguments, folder, environment and streams, its exit status, its exceptions, atexit
handlers and files flushed; signals to the client reach the launch, and a killed client takes the
launch with it. Each test runs a server of its own, so what it checks is that server's doing."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.process import FORK_SERVER_VARIABLE, child_env, support_script

SCRIPT = """
import atexit, os, sys
atexit.register(lambda: open(sys.argv[2], 'w').write('atexit ran'))
print('argv', sys.argv[1:], 'cwd', os.getcwd(), 'env', os.environ.get('PROBE'), 'pid', os.getpid())
print('to stderr', file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""

RAISE = "raise ValueError('the launch failed')\n"

SLEEP = """
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: (print('got SIGUSR1', flush=True), sys.exit(5)))
open(sys.argv[1], 'w').write(str(os.getpid()))
time.sleep(120)
"""


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('fork') / 's')
    process = subprocess.Popen([sys.executable, support_script('fork_server.py'), path], env=child_env())
    deadline = time.monotonic() + 180
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, 'the fork server did not start'
        time.sleep(0.2)
    yield path
    process.terminate()
    assert process.wait(timeout=30) == 0 and not os.path.exists(path)


def launch(server, tmp_path, body, *args, **popen):
    script = tmp_path / 'launch.py'
    script.write_text(body)
    env = child_env(**{FORK_SERVER_VARIABLE: server, 'PROBE': 'from the client'})
    return subprocess.Popen([sys.executable, support_script('fork_client.py'), str(script), *map(str, args)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def launch_sleeper(server, tmp_path):
    """(client, launch's pid) of SLEEP, once the launch has set its handler and written its pid."""
    pid_file = tmp_path / 'pid'
    pid_file.unlink(missing_ok=True)
    proc = launch(server, tmp_path, SLEEP, pid_file)
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def test_a_launch_gets_the_clients_arguments_folder_environment_and_streams(server, tmp_path):
    proc = launch(server, tmp_path, SCRIPT, 3, tmp_path / 'atexit.txt')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert out.startswith(f"argv ['3', '{tmp_path / 'atexit.txt'}'] cwd {tmp_path} env from the client pid ")
    assert int(out.split()[-1]) != proc.pid  # forked by the server, not the client itself
    assert err == 'to stderr\n'
    assert (tmp_path / 'atexit.txt').read_text() == 'atexit ran'


def test_an_exception_prints_its_traceback_and_exits_1(server, tmp_path):
    proc = launch(server, tmp_path, RAISE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.rstrip().endswith('ValueError: the launch failed')


def test_signals_reach_the_launch_and_a_killed_client_takes_it_along(server, tmp_path):
    proc, _ = launch_sleeper(server, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 5 and out == 'got SIGUSR1\n'

    proc, _ = launch_sleeper(server, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # died of the signal, as the launch did

    proc, launched = launch_sleeper(server, tmp_path)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while _alive(launched) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(launched), 'the launch outlived its killed client'


def test_without_a_server_the_client_is_python_itself(tmp_path):
    script = tmp_path / 'plain.py'
    script.write_text("import sys; print('plain', sys.argv[1:]); sys.exit(4)\n")
    env = child_env(**{FORK_SERVER_VARIABLE: str(tmp_path / 'no-server')})
    done = subprocess.run([sys.executable, support_script('fork_client.py'), str(script), 'a'], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and done.stdout == "plain ['a']\n"
    code = subprocess.run([sys.executable, support_script('fork_client.py'), '-c', 'import sys; sys.exit(6)'],
                          env=env, timeout=60)
    assert code.returncode == 6


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is not running: read its state). A process reaped between
    opening its stat file and reading it raises ProcessLookupError on the read."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().split(') ', 1)[1][0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False
