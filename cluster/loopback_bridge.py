"""Join stdin/stdout to a TCP port: an `nc HOST PORT` stand-in for ssh's ProxyCommand.

The loopback-cluster test runs sshd inside its own network namespace; `ray up` reaches it with
`ssh_proxy_command: nsenter --target PID --net python cluster/loopback_bridge.py 127.0.0.1 22`.
Ray's auth section has no SSH-port field, and `nc` is not on every machine, so this is the hop.

The two-node loopback cluster (cluster/loopback2.yaml) uses one proxy command for every node,
run both here and on the head: `loopback_bridge.py %h 22 --netns PID` enters the network
namespace of host PID first, unless this process is already in it (on the head, PID names no
process or one in the head's own namespace).
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


def _outside(pid: str) -> bool:
    """Whether host process `pid` exists here in another network namespace than this one."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 4 and args[2] == "--netns" and args[3].isdigit():
        if _outside(args[3]):
            os.execvp("nsenter", ["nsenter", "--target", args[3], "--net", sys.executable,
                                  os.path.abspath(__file__), *args[:2]])
        args = args[:2]
    if len(args) != 2 or not args[1].isdigit():
        sys.exit("usage: python cluster/loopback_bridge.py HOST PORT [--netns PID]")
    bridge(args[0], int(args[1]))
