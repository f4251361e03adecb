"""What a test needs to start a process: the repository's folders, a free port, and an environment
in which a launched helper script (``tests/support/*.py`` under torchrun) imports ``tests.support``."""

import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPPORT = os.path.join(ROOT, 'tests', 'support')
CONFIGS = os.path.join(ROOT, 'configs')
FORK_SERVER_VARIABLE = 'SALM_FORK_SERVER'  # the socket of this test worker's fork server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def support_script(name: str) -> str:
    """The path of a helper script in tests/support, e.g. ``support_script('harness.py')``."""
    return os.path.join(SUPPORT, name)


def child_env(base=None, **extra) -> dict:
    """``base`` (default: this process's environment) with the repository first on PYTHONPATH, so a
    child finds ``tests.support`` and this checkout's package, plus ``extra``."""
    env = dict(os.environ if base is None else base, **extra)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH', '')) if p)
    return env


def preimported_python() -> list:
    """The command prefix that runs ``SCRIPT|-m MODULE [args]`` as ``python`` would, forked from
    this test worker's fork server (``fork_server.py``: torch, Megatron-Core and the training loop
    imported once) when conftest.py has started one, else the interpreter itself."""
    if os.environ.get(FORK_SERVER_VARIABLE):
        return [sys.executable, support_script('fork_client.py')]
    return [sys.executable]


def rank_launcher(nproc: int, torchrun: bool = False):
    """(command prefix, environment additions) that start ``nproc`` ranks of a script or module
    (append ``path`` or ``'-m', module``). One rank: a preimported interpreter, with the variables
    torchrun gives its only worker; the package starts a world of one the same way either way (an
    in-memory store), and no launcher process is paid for. Several ranks: forked from one
    interpreter that has imported torch and Megatron-Core once (``fork_ranks.py``), or with
    ``torchrun`` the real launcher, for the tests of what it does (signals to its process group)."""
    if nproc == 1:
        return preimported_python(), {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1'}
    if torchrun:
        return [sys.executable, '-m', 'torch.distributed.run', f'--nproc-per-node={nproc}',
                f'--master-port={free_port()}'], {}
    return preimported_python() + [support_script('fork_ranks.py'), f'--nproc-per-node={nproc}'], {}
