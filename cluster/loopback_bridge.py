"""Join stdin/stdout to a TCP port: an `nc HOST PORT` stand-in for ssh's ProxyCommand.

The loopback-cluster test runs sshd inside its own network namespace; `ray up` reaches it with
`ssh_proxy_command: nsenter --target PID --net python cluster/loopback_bridge.py 127.0.0.1 22`.
Ray's auth section has no SSH-port field, and `nc` is not on every machine, so this is the hop.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 1 << 16


def _pump_stdin(sock: socket.socket) -> None:
    """Copy stdin to the socket; on EOF half-close so the server sees the end of input."""
    while chunk := os.read(0, CHUNK):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)


def bridge(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.settimeout(None)
        threading.Thread(target=_pump_stdin, args=(sock,), daemon=True).start()
        while chunk := sock.recv(CHUNK):
            os.write(1, chunk)


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: python cluster/loopback_bridge.py HOST PORT")
    bridge(sys.argv[1], int(sys.argv[2]))
