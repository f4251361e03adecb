"""Helper processes that die with the process that started them (Linux ``PR_SET_PDEATHSIG``).

A training rank starts helpers it never manages itself: dist_checkpointing's writer Manager (a
spawned process), multiprocessing's resource tracker (spawned for it), forked checkpoint writers
(megatron-core 0.16) and DataLoader workers. Killed with SIGKILL (OOM killer, scheduler, user), a
rank cannot tell them to go, and they ignore SIGTERM (the Manager on purpose, see the training
loop; the tracker by design; forked writers inherit the rank's save-and-stop handler): on a GPU
host they keep memory. Each child therefore asks the kernel for SIGKILL when its parent exits.
The resource tracker ends on its own once every process holding its pipe is gone.

The kernel ties the request to the parent *thread*: a child forked from a thread that ends is
killed then. Every helper above is started from the main thread.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_forking_pid = None
_installed = False


def die_with_parent(parent_pid: int) -> None:
    """In a child of ``parent_pid``: SIGKILL when the parent exits, or now if it already has
    (it may die between the fork and this call, and the request would never fire)."""
    if not sys.platform.startswith('linux'):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _remember_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _forked_child_dies_with_parent() -> None:
    die_with_parent(_forking_pid)


def forked_children_die_with_this_process() -> None:
    """From now on every ``os.fork`` child of this process (multiprocessing's fork start method,
    DataLoader workers, megatron-core's forked writers) dies with it. Idempotent."""
    global _installed
    if not _installed:
        os.register_at_fork(before=_remember_forking_pid, after_in_child=_forked_child_dies_with_parent)
        _installed = True
