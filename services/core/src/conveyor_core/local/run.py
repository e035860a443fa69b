"""`make run`: a real Redis, the api and one worker, with their logs in one stream,
and a mail catcher unless CONVEYOR_SMTP_HOST names a real mail server.

Ctrl-C (or SIGTERM) stops everything this started and exits 0. A service
that dies on its own stops the rest and exits 1. Whatever the services
print, their pipes are drained as they write (each line bounded), so none
ever blocks on a full pipe. Everything listens on 127.0.0.1 only: the
development key has every scope. Inside Kubernetes it refuses to start.
"""

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from conveyor_core.local.mail_catcher import MailCatcher
from conveyor_core.local.redis_server import resolve_redis
from conveyor_core.settings import masked_url
from conveyor_core.tasks import cancel_and_wait

logger = logging.getLogger("conveyor.run")

STOP_TIMEOUT_S = 25.0  # above the worker's default shutdown wait
# Where uploaded bytes go under `make run` (CONVEYOR_BLOBS_URL overrides it).
LOCAL_BLOBS = Path(".run") / "blobs"
READY_TIMEOUT_S = 30.0
# Where the services listen: this machine only (a development key has every scope).
LOCAL_HOST = "127.0.0.1"
# A service's output line longer than this is cut (a note says how much).
MAX_LINE_BYTES = 8192
# How much of a service's output is read at once.
READ_CHUNK_BYTES = 65536
# Set in every Kubernetes pod: development mode has no place there.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    module: str
    port_env: str
    default_port: int

    def port(self, env: Mapping[str, str]) -> int:
        return int(env.get(self.port_env, self.default_port))


# Every scope the api knows (conveyor_api.auth.Scope; a test keeps the two equal).
ALL_SCOPES = ("jobs:submit", "jobs:read", "jobs:admin", "documents:write", "documents:read")
DEV_KEY_NAME = "local"


def development_key(env: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The api's settings for a local run: CONVEYOR_API_KEYS if given, else a
    new key with every scope (returned, to be printed), in development mode."""
    if env.get("CONVEYOR_API_KEYS"):
        return {}, None
    key = "cvk_dev_" + secrets.token_urlsafe(24)
    entry = {
        "name": DEV_KEY_NAME,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "scopes": list(ALL_SCOPES),
    }
    return {"CONVEYOR_API_KEYS": json.dumps([entry]), "CONVEYOR_API_DEVELOPMENT": "true"}, key


# The services listen on this machine only, unless told otherwise.
LOCAL_ONLY = {"CONVEYOR_API_HOST": LOCAL_HOST, "CONVEYOR_WORKER_HEALTH_HOST": LOCAL_HOST}

API = Service("api", "conveyor_api", "CONVEYOR_API_PORT", 8000)
WORKER = Service("worker", "conveyor_worker", "CONVEYOR_WORKER_HEALTH_PORT", 8001)
SERVICES = (API, WORKER)
# MailHog's and Mailpit's port, where a developer's tools expect a mail catcher.
MAIL_CATCHER_PORT_ENV = "CONVEYOR_MAIL_CATCHER_PORT"
MAIL_CATCHER_DEFAULT_PORT = 1025


def mail_catcher_port(env: Mapping[str, str]) -> int | None:
    """The local mail catcher's port, or None when a real mail server is set."""
    if env.get("CONVEYOR_SMTP_HOST"):
        return None
    return int(env.get(MAIL_CATCHER_PORT_ENV, MAIL_CATCHER_DEFAULT_PORT))


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:  # noqa: S104 - where the services bind
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def busy_port_error(env: Mapping[str, str]) -> str | None:
    """A one-line error if a service's port is taken, else None."""
    for service in SERVICES:
        port = service.port(env)
        if port_in_use(port):
            return (
                f"error: port {port} for the {service.name} is already in use; "
                f"set {service.port_env} to a free port"
            )
    catcher_port = mail_catcher_port(env)
    if catcher_port is not None and port_in_use(catcher_port, "127.0.0.1"):
        return (
            f"error: port {catcher_port} for the mail catcher is already in use; set "
            f"{MAIL_CATCHER_PORT_ENV} to a free port, or CONVEYOR_SMTP_HOST to a mail server"
        )
    return None


class BoundedLines:
    """Bytes in, whole lines out, each at most `max_bytes` (the rest of a longer
    line is dropped, and a note says how much), whatever arrives: a service
    that prints one 5 MB line costs this runner 5 MB read, not 5 MB held."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._line = bytearray()
        self._dropped = 0  # bytes of the current line past max_bytes

    def feed(self, chunk: bytes) -> list[str]:
        lines = []
        *ends, rest = chunk.split(b"\n")
        for part in ends:
            self._take(part)
            lines.append(self._end())
        self._take(rest)
        return lines

    def flush(self) -> list[str]:
        """The last line, if the output ended without a newline."""
        return [self._end()] if self._line or self._dropped else []

    def _take(self, part: bytes) -> None:
        room = self.max_bytes - len(self._line)
        self._line += part[:room]
        self._dropped += max(0, len(part) - room)

    def _end(self) -> str:
        line = self._line.decode(errors="replace")
        if self._dropped:
            line += f" … [{self._dropped} more bytes cut]"
        self._line, self._dropped = bytearray(), 0
        return line


async def pump(prefix: str, stream: asyncio.StreamReader, out: TextIO) -> None:
    """Copy a service's output to `out`, line by line with its prefix, until it
    closes. It reads as the service writes, so the service never blocks on a
    full pipe; no line, however long, stops it."""
    lines = BoundedLines()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        for line in lines.feed(chunk):
            out.write(f"{prefix} | {line}\n")
        out.flush()
    for line in lines.flush():
        out.write(f"{prefix} | {line}\n")
    out.flush()


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner dies, even by SIGKILL (Linux only)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def start(
    argv: list[str], env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """A service's process, its stdout and stderr in one pipe for `pump`."""
    # A session of its own: the terminal's Ctrl-C reaches only this runner,
    # which then stops each service in order with SIGTERM.
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # before any thread of ours starts
    )


async def stop(process: asyncio.subprocess.Process, hurry: asyncio.Event) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S, or at once on `hurry`."""
    if process.returncode is not None:
        return
    process.terminate()
    exited = asyncio.ensure_future(process.wait())
    hurried = asyncio.ensure_future(hurry.wait())
    await asyncio.wait({exited, hurried}, timeout=STOP_TIMEOUT_S, return_when="FIRST_COMPLETED")
    hurried.cancel()
    if process.returncode is None:
        process.kill()
    await exited


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _wait_ready(env: Mapping[str, str]) -> bool:
    urls = [f"http://{LOCAL_HOST}:{s.port(env)}/readyz" for s in SERVICES]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if all([await asyncio.to_thread(_ready, url) for url in urls]):
            return True
        await asyncio.sleep(0.2)
    return False


def _banner(env: Mapping[str, str], redis_url: str, key: str | None, caught: bool) -> str:
    api = f"http://{LOCAL_HOST}:{API.port(env)}"
    worker = f"http://{LOCAL_HOST}:{WORKER.port(env)}"
    key_shown = key or "(yours, from CONVEYOR_API_KEYS)"
    smtp = f"{env.get('CONVEYOR_SMTP_HOST')}:{env.get('CONVEYOR_SMTP_PORT', 587)}"
    mail = (
        f"caught on {smtp} and listed on the status page"
        if caught
        else f"sent through {smtp} (CONVEYOR_SMTP_HOST)"
    )
    return "\n".join(
        [
            "",
            "Conveyor is running (development mode). Ctrl-C stops everything.",
            f"  status page     {api}/ui/",
            f"  api docs        {api}/docs",
            f"  api key         {key_shown}",
            f"  submit tasks    curl -X POST {api}/task -H 'content-type: application/json' "
            f"-H 'authorization: Bearer {key or '<key>'}' -d '{{\"count\": 5}}'",
            f"  api health      {api}/healthz   {api}/readyz",
            f"  worker health   {worker}/healthz   {worker}/readyz",
            f"  mail            {mail}",
            f"  redis           {masked_url(redis_url)}",
            "",
        ]
    )


async def run_services(redis_url: str, mail_env: Mapping[str, str]) -> int:
    keys, key = development_key(os.environ)
    env = {
        **LOCAL_ONLY,
        **os.environ,
        **keys,
        **mail_env,
        "REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
    }
    # Uploaded bytes go to a folder of the checkout unless a blob store is set.
    env.setdefault("CONVEYOR_BLOBS_URL", f"file://{Path.cwd() / LOCAL_BLOBS}")
    stopping, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():  # a second Ctrl-C: no more waiting for a graceful stop
            hurry.set()
        stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    processes = {s.name: await start([sys.executable, "-m", s.module], env) for s in SERVICES}
    streams = [
        asyncio.create_task(pump(f"{name:<6}", p.stdout, sys.stdout))
        for name, p in processes.items()
        if p.stdout is not None
    ]
    stopped = asyncio.create_task(stopping.wait())
    exits = {asyncio.create_task(p.wait()): name for name, p in processes.items()}
    ready = asyncio.create_task(_wait_ready(env))
    await asyncio.wait({stopped, ready, *exits}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        if ready.result():
            print(_banner(env, redis_url, key, caught=bool(mail_env)), flush=True)
        else:
            logger.warning("not ready after %.0f s; see the logs above", READY_TIMEOUT_S)
    ready.cancel()

    done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
    died = [exits[t] for t in done if t in exits]
    for name in died:
        logger.error("the %s exited with code %s; stopping", name, processes[name].returncode)

    if stopping.is_set():
        logger.info("stopping (Ctrl-C again to kill at once)")
    for process in reversed(processes.values()):  # the worker first: it drains jobs
        await stop(process, hurry)
    for failed in await asyncio.gather(*streams, return_exceptions=True):
        if isinstance(failed, Exception):  # the output is lost, not the stop
            logger.warning("a service's output could not be copied: %r", failed)
    await cancel_and_wait(stopped)
    return 1 if died else 0


def in_kubernetes_error(env: Mapping[str, str]) -> str | None:
    """A one-line error when run inside a Kubernetes pod, else None."""
    if env.get(KUBERNETES_ENV):
        return (
            f"error: {KUBERNETES_ENV} is set, so this is a Kubernetes pod; `make run` starts "
            "Conveyor in development mode (a key with every scope), for a developer's machine "
            "only. Deploy with the Helm chart instead."
        )
    return None


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="run    | %(message)s", stream=sys.stdout)
    if error := in_kubernetes_error(os.environ) or busy_port_error(os.environ):
        print(error, file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        # Its port is none of the services' nor the mail catcher's (they bind
        # theirs after it starts).
        catcher_port = mail_catcher_port(os.environ)
        later_ports = [service.port(os.environ) for service in SERVICES]
        later_ports += [catcher_port] if catcher_port is not None else []
        redis = stack.enter_context(resolve_redis(avoid_ports=later_ports))
        mail_env: dict[str, str] = {}
        if catcher_port is not None:
            mail_env = stack.enter_context(MailCatcher(redis.url, catcher_port)).smtp_env()
        return asyncio.run(run_services(redis.url, mail_env))


if __name__ == "__main__":
    sys.exit(main())
