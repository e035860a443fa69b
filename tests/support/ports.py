"""Ports for servers a test stops and starts again."""

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
