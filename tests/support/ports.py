"""Ports for servers a test stops and starts again, and the sockets this process holds to one."""

import contextlib
import os
import random
import socket
from pathlib import Path

# Linux's default ephemeral range starts here; read from the kernel where it can be.
_EPHEMERAL_FROM = 32768
_LOWEST = 10_000


def _ephemeral_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_FROM


def restartable_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range. While its server is
    stopped, a port from that range can be handed to anything else on the
    machine (another test's server asking for port 0, a connection's own end),
    and the restarted server finds it taken; a port below the range is handed
    out only by asking for it."""
    top = max(_ephemeral_from(), _LOWEST + 1000)
    while True:
        port = random.randrange(_LOWEST, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port


def sockets_to(port: int) -> int:
    """How many TCP sockets this process holds open to `port` (its file
    descriptors, matched by inode in /proc/self/net/tcp)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed while we look
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    rows = [line.split() for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if int(row[2].split(":")[1], 16) == port and row[9] in inodes)
