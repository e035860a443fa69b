"""`make run`'s runner as a real process: it serves, it refuses a busy port, Ctrl-C stops all."""

import asyncio
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from playwright.sync_api import expect

from conveyor_core.local.redis_server import RedisProcess, free_port
from conveyor_core.local.run import (
    MAX_LINE_BYTES,
    BoundedLines,
    busy_port_error,
    pump,
    start,
    stop,
)
from tests.support import loud_jobs
from tests.support.auth import bearer
from tests.support.browser import open_page
from tests.support.processes import REPO_ROOT
from tests.support.redis_faults import configured

pytestmark = pytest.mark.e2e


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def runner_env(api_port: int, worker_port: int) -> dict[str, str]:
    unset = ("REDIS_URL", "CONVEYOR_API_KEYS", "CONVEYOR_SMTP_HOST", "KUBERNETES_SERVICE_HOST")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_WORKER_HEALTH_PORT=str(worker_port),
        CONVEYOR_MAIL_CATCHER_PORT=str(free_port()),
        CONVEYOR_API_TASK_SLEEP_MIN_S="0.01",
        CONVEYOR_API_TASK_SLEEP_MAX_S="0.05",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_busy_port_error_names_the_port_and_the_setting(busy_port: int) -> None:
    error = busy_port_error({"CONVEYOR_API_PORT": str(busy_port)})
    assert error == (
        f"error: port {busy_port} for the api is already in use; "
        "set CONVEYOR_API_PORT to a free port"
    )
    assert busy_port_error({"CONVEYOR_API_PORT": str(free_port())}) is None or (
        "CONVEYOR_WORKER_HEALTH_PORT" in str(busy_port_error({}))
    )


def refusal(module: str, env: dict[str, str]) -> str:
    """The one line `python -m module` writes to stderr as it refuses to start (exit 1)."""
    result = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_runner_refuses_a_busy_port_in_one_line(busy_port: int) -> None:
    line = refusal("conveyor_core.local.run", runner_env(busy_port, free_port()))
    assert line == (
        f"error: port {busy_port} for the api is already in use; "
        "set CONVEYOR_API_PORT to a free port"
    )


class Output:
    """The runner's stdout, read on a thread so a wait can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stream = process.stdout
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.put(line)

    def close(self) -> None:
        """Once the process has exited: drain the pipe into `seen` and close it."""
        self.reader.join(timeout=10)
        self.stream.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())

    def until(self, pattern: str, timeout_s: float) -> str:
        """Read up to the first line matching `pattern`; return it."""
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left_s)
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")

    def text(self) -> str:
        return "".join(self.seen)


@dataclass
class Runner:
    """`make run`'s runner as a child process, past its banner."""

    process: subprocess.Popen[str]
    output: Output
    api_port: int
    worker_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def key(self) -> str:
        """The development key the banner printed."""
        key = re.search(r"api key\s+(cvk_dev_\S+)", self.output.text())
        assert key is not None, self.output.text()
        return key.group(1)

    def ctrl_c(self) -> None:
        """Stop it as Ctrl-C does; it exits 0 once everything it started stopped."""
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=60) == 0


StartRunner = Callable[..., Runner]


@pytest.fixture
def start_runner(log_dir: Path) -> Iterator[StartRunner]:
    """Starts the runner on free ports, with `runner_env` and the given
    variables, and waits for its banner; at the end kills it if it still runs
    and keeps its output as run.log."""
    started: list[Runner] = []

    def start(**env: str) -> Runner:
        api_port, worker_port = free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor_core.local.run"],
            env={**runner_env(api_port, worker_port), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runner = Runner(process, Output(process), api_port, worker_port)
        started.append(runner)
        runner.output.until(r"^\s+redis\s+redis://", timeout_s=60)
        return runner

    yield start
    for runner in started:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait()
        runner.output.close()
        (log_dir / "run.log").write_text(runner.output.text())


def test_runner_serves_the_tutorial_and_stops_everything_on_ctrl_c(
    start_runner: StartRunner,
) -> None:
    runner = start_runner()
    api_port, worker_port, output = runner.api_port, runner.worker_port, runner.output
    banner = output.text()
    assert f"http://127.0.0.1:{api_port}/docs" in banner
    assert f"http://127.0.0.1:{api_port}/ui/" in banner
    assert httpx.get(f"{runner.api}/ui/").status_code == 200
    assert f"http://127.0.0.1:{worker_port}/healthz" in banner
    # This machine only: the development key has every scope.
    assert listening_addresses(api_port) == {"127.0.0.1"}
    assert listening_addresses(worker_port) == {"127.0.0.1"}
    redis_url = re.search(r"redis\s+(redis://\S+)", banner)
    assert redis_url is not None

    # Development mode still needs a key: the one the banner printed.
    task = f"{runner.api}/task"
    assert httpx.post(task, json={"count": 1}).status_code == 401
    response = httpx.post(task, json={"count": 5}, headers=bearer(runner.key))
    assert response.status_code == 201
    # The worker's log, streamed with its prefix, shows the five jobs finishing.
    pending = set(response.json()["job_ids"])
    while pending:
        line = output.until(r'^worker \| .*"message":\s*"job end"', timeout_s=30)
        entry = json.loads(line.removeprefix("worker | "))
        assert entry["outcome"] == "complete"
        pending.discard(entry["job_id"])

    runner.ctrl_c()
    output.until(r"^api    \| .*Finished server process", timeout_s=5)

    # Everything it started is gone: both ports are closed, Redis too.
    for port in (api_port, worker_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://localhost:{port}/healthz")
    with (
        pytest.raises(redis_sync.ConnectionError),
        redis_sync.Redis.from_url(redis_url.group(1)) as client,
    ):
        client.ping()


def closes_within(port: int, timeout_s: float) -> bool:
    """Whether `port` refuses connections within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://localhost:{port}/healthz", timeout=0.5)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:
            pass  # accepted, then dropped: the service is going down; look again
        time.sleep(0.1)
    return False


def test_services_die_with_a_killed_runner(redis_url: str, start_runner: StartRunner) -> None:
    runner = start_runner(REDIS_URL=redis_url)
    runner.process.kill()
    runner.process.wait()
    for port in (runner.api_port, runner.worker_port):
        assert closes_within(port, timeout_s=15), f"port {port} still serves"


def test_busy_mail_catcher_port_is_named_unless_a_mail_server_is_set(busy_port: int) -> None:
    env = {
        "CONVEYOR_API_PORT": str(free_port()),
        "CONVEYOR_WORKER_HEALTH_PORT": str(free_port()),
        "CONVEYOR_MAIL_CATCHER_PORT": str(busy_port),
    }
    assert busy_port_error(env) == (
        f"error: port {busy_port} for the mail catcher is already in use; set "
        "CONVEYOR_MAIL_CATCHER_PORT to a free port, or CONVEYOR_SMTP_HOST to a mail server"
    )
    assert busy_port_error({**env, "CONVEYOR_SMTP_HOST": "mail.example.com"}) is None


DOCUMENT = (
    b"Conveyor runs background jobs for web teams. "
    b"The api validates and enqueues; the worker runs the jobs. "
    b"Redis holds the queues, the results and the job records. "
    b"A failed try is retried with backoff, then dead-lettered."
)


def test_make_run_finishes_the_seed_workflow_with_nothing_configured(
    start_runner: StartRunner, tmp_path: Path
) -> None:
    """Upload -> summary -> email on a fresh machine: the mail lands in the local
    catcher and the status page lists it."""
    runner = start_runner()
    banner = runner.output.text()
    assert re.search(r"mail\s+caught on 127\.0\.0\.1:\d+ and listed on the status page", banner)
    with httpx.Client(base_url=runner.api, headers=bearer(runner.key)) as api:
        response = api.post(
            "/v1/documents",
            files={"file": ("notes.txt", DOCUMENT)},
            data={"notify_email": "ada@example.com"},
        )
        assert response.status_code == 202, response.text
        name = response.json()["document"]["name"]
        deadline = time.monotonic() + 60
        mails: list[dict[str, Any]] = []
        while not mails and time.monotonic() < deadline:
            mails = api.get("/v1/dev/mail").json()["items"]
            time.sleep(0.2)

    assert mails, runner.output.text()
    (mail,) = mails
    assert mail["to"] == ["ada@example.com"]
    assert mail["subject"] == f"Your document '{name}' is ready"
    assert "Redis" in mail["body"]

    # The status page lists it: subject, recipient, time and body.
    with open_page(tmp_path / "profile") as (page, errors):
        page.add_init_script(f"sessionStorage.setItem('conveyor.apiKey', {runner.key!r})")
        page.goto(f"{runner.api}/ui/")
        row = page.locator("#mail-list li")
        expect(row).to_have_count(1, timeout=15_000)
        expect(row.locator(".mail-subject")).to_have_text(mail["subject"])
        expect(row.locator(".mail-to")).to_have_text("to ada@example.com")
        expect(row.locator(".mail-body")).to_contain_text("Redis")
        assert errors.uncaught == []
        assert errors.console == []

    runner.ctrl_c()


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port` (Linux's /proc/net/tcp)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def test_bounded_lines_cut_a_long_line_and_keep_the_rest_whole() -> None:
    lines = BoundedLines(max_bytes=10)
    assert lines.feed(b"short\nsplit ") == ["short"]
    assert lines.feed(b"acr") == []
    assert lines.feed(b"oss\n" + b"x" * 5_000_000) == ["split acro … [2 more bytes cut]"]
    assert lines.feed(b"y" * 1000 + b"\nlast") == ["x" * 10 + " … [5000990 more bytes cut]"]
    assert lines.flush() == ["last"]
    assert lines.flush() == []


# A service gone wild: 12 MB of output in long lines on both streams, then a last word.
LOUD = """
import sys
for stream in (sys.stdout, sys.stderr) * 3:
    stream.write("x" * 2_000_000 + "\\n")
    stream.flush()
print("done", flush=True)
"""


async def test_a_service_that_prints_megabyte_lines_never_blocks_on_its_pipe() -> None:
    process = await start([sys.executable, "-c", LOUD])
    assert process.stdout is not None
    out = io.StringIO()
    copying = asyncio.create_task(pump("loud  ", process.stdout, out))
    try:
        async with asyncio.timeout(30):
            assert await process.wait() == 0
            await copying
    finally:
        await stop(process, asyncio.Event())
    lines = out.getvalue().splitlines()
    assert lines[-1] == "loud   | done"
    assert len(lines) == 7
    assert all(len(line) < MAX_LINE_BYTES + 100 for line in lines)
    assert lines[0].endswith(f"[{2_000_000 - MAX_LINE_BYTES} more bytes cut]")


async def test_stop_kills_a_service_that_ignores_sigterm_when_hurried() -> None:
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    process = await start([sys.executable, "-c", ignores])
    assert process.stdout is not None
    assert await process.stdout.readline() == b"up\n"
    hurry = asyncio.Event()
    stopping = asyncio.create_task(stop(process, hurry))
    await asyncio.sleep(0.3)
    assert not stopping.done()  # SIGTERM ignored: still waiting
    hurry.set()  # a second Ctrl-C
    async with asyncio.timeout(5):
        await stopping
    assert process.returncode == -signal.SIGKILL


def test_runner_refuses_to_start_inside_kubernetes() -> None:
    env = {**runner_env(free_port(), free_port()), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    line = refusal("conveyor_core.local.run", env)
    assert "KUBERNETES_SERVICE_HOST is set" in line
    assert "development mode" in line


def test_the_api_in_development_mode_refuses_to_start_inside_kubernetes() -> None:
    env = {**runner_env(free_port(), free_port()), "CONVEYOR_API_DEVELOPMENT": "true"}
    env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1"
    line = refusal("conveyor_api", env)
    assert line.startswith("conveyor-api: cannot start: ")
    assert "CONVEYOR_API_DEVELOPMENT is true inside Kubernetes" in line


def test_a_worker_with_development_mail_refuses_to_start_inside_kubernetes(
    redis_url: str,
) -> None:
    """`make run`'s mail development mode (any address) would make a pod an open relay."""
    env = {**runner_env(free_port(), free_port()), "REDIS_URL": redis_url}
    env.update(CONVEYOR_MAIL_DEVELOPMENT="true", KUBERNETES_SERVICE_HOST="10.96.0.1")
    line = refusal("conveyor_worker", env)
    assert line.startswith("conveyor-worker: cannot start: ")
    assert (
        "CONVEYOR_MAIL_DEVELOPMENT (or CONVEYOR_API_DEVELOPMENT) is true inside Kubernetes" in line
    )


def test_a_refused_upload_leaves_the_runner_responsive_and_ctrl_c_stops_it(
    own_redis: RedisProcess, start_runner: StartRunner
) -> None:
    """The issue's case: a 5 MiB upload refused by a full Redis used to log the
    whole document; under `make run` the copy stalled and the api hung. (The
    bytes now go to the blob store; a full Redis refuses the document's record.)"""
    runner = start_runner(REDIS_URL=own_redis.url)
    output = runner.output
    # Full: no write that adds data is taken (the record of an upload included).
    with configured(own_redis.url, maxmemory=1):
        for _ in range(3):
            response = httpx.post(
                f"{runner.api}/v1/documents",
                files={"file": ("notes.txt", b"Ada's notes. " * 400_000)},
                headers=bearer(runner.key),
                timeout=30,
            )
            assert response.status_code == 507, response.text
        output.until(r"redis fault out_of_memory in POST /v1/documents", timeout_s=10)
        # Responsive: a hung api (the stalled copy) fails here.
        assert httpx.get(f"{runner.api}/healthz", timeout=5).status_code == 200

    runner.ctrl_c()
    output.close()
    longest = max(len(line) for line in output.seen)
    assert longest < 8192, f"a {longest}-character line"
    assert "Ada's notes" not in output.text()


def test_a_job_printing_5_mb_lines_leaves_the_runner_responsive_and_ctrl_c_stops_it(
    start_runner: StartRunner,
) -> None:
    """A child that prints a line far past any pipe's buffer (the issue's api
    wrote a 5 MB one): the runner copies it cut, the child never blocks on its
    write, both services answer meanwhile, and Ctrl-C stops everything."""
    runner = start_runner(
        CONVEYOR_JOB_MODULES=f"conveyor_seed,{loud_jobs.MODULE}", PYTHONPATH=str(REPO_ROOT)
    )
    output = runner.output
    response = httpx.post(
        f"{runner.api}/v1/jobs/shout", json={"lines": 2}, headers=bearer(runner.key), timeout=10
    )
    assert response.status_code == 201, response.text
    # A worker blocked in its write (a pipe nobody drains) never ends the job.
    line = output.until(r'^worker \| .*"message":\s*"job end"', timeout_s=60)
    entry = json.loads(line.removeprefix("worker | "))
    assert (entry["job_id"], entry["outcome"]) == (response.json()["id"], "complete")
    assert httpx.get(f"{runner.api}/healthz", timeout=5).status_code == 200
    worker_health = f"http://127.0.0.1:{runner.worker_port}/healthz"
    assert httpx.get(worker_health, timeout=5).status_code == 200

    runner.ctrl_c()
    output.close()
    shouted = [line for line in output.seen if line.startswith("worker | xxx")]
    assert len(shouted) == 2, [line[:100] for line in shouted]
    cut = loud_jobs.LINE_BYTES - MAX_LINE_BYTES
    assert all(line.rstrip().endswith(f"[{cut} more bytes cut]") for line in shouted)
    longest = max(len(line) for line in output.seen)
    assert longest < MAX_LINE_BYTES + 100, f"a {longest}-character line"
