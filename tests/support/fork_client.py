"""A launch through the test worker's fork server (``fork_server.py``), in place of
``python SCRIPT|-m MODULE [args]``: exits with the launch's status, or dies of the signal that
ended it. Imports nothing heavy, so it starts in milliseconds. Without a server to reach (none
named in SALM_FORK_SERVER, or it has ended), or for ``-c CODE``, it becomes that ``python`` command
itself.
"""

import array
import json
import os
import signal
import socket
import struct
import sys

HEADER = struct.Struct('!I')
STATUS = struct.Struct('!i')
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


def connect() -> socket.socket | None:
    path = os.environ.get('SALM_FORK_SERVER')
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def main() -> None:
    sock = None if sys.argv[1:2] == ['-c'] else connect()  # the server runs scripts and modules
    if sock is None:
        os.execv(sys.executable, [sys.executable] + sys.argv[1:])
    body = json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd()}).encode()
    sock.sendmsg([HEADER.pack(len(body))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0, 1, 2]))])
    sock.sendall(body)
    for number in FORWARDED:
        signal.signal(number, lambda received, _: sock.send(bytes([received])))
    reply = b''
    while len(reply) < STATUS.size:
        chunk = sock.recv(STATUS.size - len(reply))
        if not chunk:
            sys.exit('fork_client: the fork server ended before the launch did')
        reply += chunk
    (status,) = STATUS.unpack(reply)
    if status >= 0:
        sys.exit(status)
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)


if __name__ == '__main__':
    main()
