"""Serves a test worker's launches of the package from one interpreter that has already imported
torch, Megatron-Core and the training loop (~9 s of imports per launch on a 2-core machine):

    python tests/support/fork_server.py SOCKET      (started once per pytest worker by conftest.py)
    python tests/support/fork_client.py SCRIPT|-m MODULE [args]   (what a test launches instead
                                                                   of ``python ...``)

For each client the server forks a process that takes the client's standard streams, working
folder and environment, runs the script or module as ``__main__`` (``fork_ranks.run_as_main``)
and ends as an interpreter would (``fork_ranks.finish``). The client exits
with that process's status, and passes SIGTERM, SIGINT, SIGUSR1 and SIGHUP on to it; a client that
dies (a test's timeout kills it) takes the forked process and everything it started with it. The
server polls one loop with no threads, so nothing it forks inherits a lock held elsewhere. It ends
when its parent (the pytest worker) does, or on SIGTERM.

Not for launches whose imports depend on their environment: the forked process keeps the modules
the server imported with its own.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import struct
import sys

# What the forked processes share (as fork_ranks.py, which the server also runs for multi-rank jobs).
import megatron.core.models.gpt  # noqa: F401
import torch  # noqa: F401

import megatron_salm_mtp.train  # noqa: F401
import megatron_salm_mtp.training.loop  # noqa: F401
from tests.support.fork_ranks import finish, run_as_main

HEADER = struct.Struct('!I')  # length of the JSON request that follows
STATUS = struct.Struct('!i')  # exit status; -N: killed by signal N
POLL_SECONDS = 0.05


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The client's request ({argv, env, cwd}) and its three standard file descriptors."""
    fds = array.array('i')
    data, ancillary, _, _ = conn.recvmsg(HEADER.size, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    (length,) = HEADER.unpack(data)
    body = b''
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ConnectionError('client closed its request early')
        body += chunk
    return json.loads(body), list(fds)


def become_the_launch(request: dict, fds: list[int], open_sockets: list[socket.socket]) -> int:
    """In the forked process: the client's streams, folder and environment, default signal
    handling, then the target; returns its exit status."""
    os.setpgid(0, 0)  # its own group: a dead client's launch is killed with all it started
    for sock in open_sockets:
        sock.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for number in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = request['argv']
    if argv[:1] == ['-m']:
        return run_as_main(argv[1], argv[2:])
    return run_as_main(None, argv)


def serve(path: str) -> None:
    parent = os.getppid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + '.tmp')
    listener.listen(64)
    os.rename(path + '.tmp', path)  # clients see the socket only once it accepts
    launches: dict[int, socket.socket | None] = {}  # pid -> its client's connection (None: client gone)
    while not stopping and os.getppid() == parent:
        clients = [conn for conn in launches.values() if conn is not None]
        ready, _, _ = select.select([listener] + clients, [], [], POLL_SECONDS)
        for sock in ready:
            if sock is listener:
                conn, _ = listener.accept()
                request, fds = receive_request(conn)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    finish(become_the_launch(request, fds, [listener, conn] + clients))
                try:  # as the child does itself: whichever runs first, the group exists for killpg
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                for fd in fds:
                    os.close(fd)
                launches[pid] = conn
            else:
                relay(sock, launches)
        reap(launches)
    listener.close()
    os.unlink(path)


def relay(conn: socket.socket, launches: dict) -> None:
    """A client's signal numbers go to its launch; its end of the connection kills the launch."""
    pid = next(p for p, c in launches.items() if c is conn)
    data = conn.recv(64)
    if not data:
        conn.close()
        launches[pid] = None
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    for number in data:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def reap(launches: dict) -> None:
    """Send each ended launch's status to its client."""
    while launches:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        if pid not in launches:
            continue
        conn = launches.pop(pid)
        if conn is None:
            continue
        try:
            conn.sendall(STATUS.pack(os.waitstatus_to_exitcode(status)))
        except OSError:  # the client is gone
            pass
        conn.close()


if __name__ == '__main__':
    serve(sys.argv[1])
