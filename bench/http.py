"""Conveyor's api against a bare FastAPI + arq app, over real HTTP.

`python -m bench.http` (the HTTP part of `make bench`) serves both apps, one
uvicorn process each (uvloop, httptools, no access log) on one Redis of the
bench's own, and loads them with `wrk` (or, where `wrk` is missing, the
Python load generator in bench.loadgen; the report says which) in
alternating rounds:

- submit: Conveyor's `POST /v1/jobs/noop` (api key, rate limit, tracing,
  request logs and metrics on, as shipped) against the bare app's
  `POST /task` (`enqueue_job` of a no-op job on a pool made once);
- read: Conveyor's `GET /v1/jobs/{id}` against the bare app's
  `GET /job/{id}` (one HGETALL of the same job's hash).

It prints requests/s, p50 and p99 latency, the server's CPU per request,
Redis' CPU and commands per request, each the median over the rounds, with
ratios. On a small machine the load generator, Redis and the server share
the cores, so Redis' CPU per request moves requests/s too.
The Redis database is flushed before each run, so every submit run starts
from the same empty queue.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis as redis_sync

from conveyor_api.auth import Scope, key_digest
from conveyor_core.keys import job_key
from conveyor_core.local.redis_server import free_port, local_redis_process

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = REPO_ROOT / "test-artifacts" / "bench"
# Made up for the bench; the api is given its digest.
BENCH_KEY = "cvk_bench_0123456789abcdef0123456789abcdef"
THREADS = 2
CONNECTIONS = 32
# A submit's body: the no-op job takes no fields.
SUBMIT_BODY = "{}"
TARGET_RATIO = 0.7
TARGET_P99_RATIO = 2.0


@dataclass
class Server:
    """One app, served by uvicorn as its own process."""

    name: str
    module: str
    port: int = field(default_factory=free_port)
    process: "subprocess.Popen[bytes] | None" = None
    log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, redis_url: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        if self.module == "conveyor_api":
            command = [sys.executable, "-m", "conveyor_api"]
            env.update(conveyor_env(redis_url, self.port))
        else:
            command = [sys.executable, "-m", self.module, str(self.port), redis_url]
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = (LOG_DIR / f"http-{self.name}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while not answers(self.base_url + "/openapi.json"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.log is not None:
            self.log.close()

    def cpu_s(self) -> float:
        """User + system CPU time of the server so far (Linux's /proc)."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def conveyor_env(redis_url: str, port: int) -> dict[str, str]:
    """The api as shipped (INFO request logs, tracing, metrics), with one key
    whose rate limit is generous: the limiter runs on every request, never refuses."""
    key = {"name": "bench", "sha256": key_digest(BENCH_KEY), "scopes": [s.value for s in Scope]}
    return {
        "REDIS_URL": redis_url,
        "CONVEYOR_API_HOST": "127.0.0.1",
        "CONVEYOR_API_PORT": str(port),
        "CONVEYOR_API_KEYS": json.dumps([key]),
        "CONVEYOR_API_RATE_LIMIT_PER_S": "1000000",
        "CONVEYOR_API_RATE_LIMIT_BURST": "1000000",
        "CONVEYOR_API_LOG_LEVEL": "INFO",
        "CONVEYOR_JOB_MODULES": "bench.jobs",
    }


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Run:
    """One load run's figures."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    redis_cpu_ms_per_request: float  # Redis' own CPU: on a small machine it competes
    redis_commands_per_request: float
    failed: int  # non-2xx answers and socket errors


@dataclass
class Contender:
    """One route of one app, under load."""

    name: str
    server: Server
    method: str
    path: str  # `{job_id}` is filled in with the job each run reads
    authenticated: bool
    runs: list[Run] = field(default_factory=list)

    def median(self, figure: str) -> float:
        return statistics.median(float(getattr(run, figure)) for run in self.runs)


@dataclass
class LoadGenerator:
    name: str
    threads: int
    connections: int
    duration_s: float

    def run(self, url: str, method: str, headers: dict[str, str], body: str) -> dict[str, int]:
        """requests, duration_us, p50_us, p99_us, errors, non2xx."""
        if self.name == "wrk":
            return self._wrk(url, method, headers, body)
        command = [sys.executable, "-m", "bench.loadgen", url, method, str(self.connections)]
        command += [str(self.duration_s), json.dumps(headers), body]
        out = subprocess.run(  # noqa: S603
            command,
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

    def _wrk(self, url: str, method: str, headers: dict[str, str], body: str) -> dict[str, int]:
        lines = [f"wrk.method = {json.dumps(method)}", f"wrk.body = {json.dumps(body)}"]
        lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
        lines.append(WRK_REPORT)
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write("\n".join(lines))
            script.flush()
            command = ["wrk", f"-t{self.threads}", f"-c{self.connections}"]
            command += [f"-d{self.duration_s:g}s", "--timeout", "10s", "-s", script.name, url]
            out = subprocess.run(command, capture_output=True, check=True)  # noqa: S603
        report = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("{")]
        return json.loads(report[-1])  # type: ignore[no-any-return]


# wrk's `done` hook: the figures as one JSON line, latencies in microseconds.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def redis_cpu_s(redis: "redis_sync.Redis") -> float:
    """User + system CPU time of the Redis server so far (INFO cpu)."""
    info: dict[str, Any] = redis.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def total_commands(redis: "redis_sync.Redis") -> int:
    stats: dict[str, Any] = redis.info("commandstats")  # type: ignore[assignment]
    return sum(int(v["calls"]) for v in stats.values())


def fresh_job(redis: "redis_sync.Redis", conveyor: Server) -> str:
    """Empty the database, and submit the one job the read runs read."""
    redis.flushdb()
    request = urllib.request.Request(  # noqa: S310
        f"{conveyor.base_url}/v1/jobs/noop",
        data=SUBMIT_BODY.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        job: dict[str, Any] = json.load(response)
    # As a worker would leave it once complete: the record both reads read (a
    # waiting job has no hash for the bare app's HGETALL to find).
    now_ms = int(time.time() * 1000)
    redis.zrem(job["queue"], job["id"])
    redis.hset(
        job_key(job["id"]),
        mapping={
            "state": "complete",
            "version": 3,
            "queue": job["queue"],
            "tries": 1,
            "started_at_ms": now_ms,
            "ready_at_ms": now_ms,
            "finished_at_ms": now_ms,
            "result": "null",
            "progress": 100,
        },
    )
    return str(job["id"])


def measure(
    contender: Contender, load: LoadGenerator, redis: "redis_sync.Redis", job_id: str
) -> Run:
    headers = {"Content-Type": "application/json"} if contender.method == "POST" else {}
    if contender.authenticated:
        headers["Authorization"] = f"Bearer {BENCH_KEY}"
    body = SUBMIT_BODY if contender.method == "POST" else ""
    url = contender.server.base_url + contender.path.format(job_id=job_id)
    cpu_s, commands = contender.server.cpu_s(), total_commands(redis)
    redis_cpu = redis_cpu_s(redis)
    figures = load.run(url, contender.method, headers, body)
    cpu_s = contender.server.cpu_s() - cpu_s
    redis_cpu = redis_cpu_s(redis) - redis_cpu
    commands = total_commands(redis) - commands - 2  # less our INFO commandstats and cpu
    requests = max(figures["requests"], 1)
    return Run(
        requests_per_s=requests / (figures["duration_us"] / 1_000_000),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        cpu_ms_per_request=cpu_s * 1000 / requests,
        redis_cpu_ms_per_request=redis_cpu * 1000 / requests,
        redis_commands_per_request=commands / requests,
        failed=figures["non2xx"] + figures["errors"],
    )


@contextmanager
def serving(servers: list[Server], redis_url: str) -> Iterator[None]:
    try:
        for server in servers:
            server.start(redis_url)
        yield
    finally:
        for server in servers:
            server.stop()


def report(pairs: list[tuple[Contender, Contender]], load: LoadGenerator, rounds: int) -> str:
    lines = [
        f"HTTP: {load.name}, {load.threads} threads, {load.connections} connections, "
        f"{load.duration_s:g} s a run, {rounds} alternating rounds (medians)",
        f"{'route':<36} {'req/s':>8} {'p50':>9} {'p99':>9} {'CPU/req':>11} "
        f"{'Redis CPU/req':>14} {'Redis cmds/req':>15}",
    ]
    for pair in pairs:
        for c in pair:
            lines.append(
                f"{c.name:<36} {c.median('requests_per_s'):>8.0f} "
                f"{c.median('p50_ms'):>6.1f} ms {c.median('p99_ms'):>6.1f} ms "
                f"{c.median('cpu_ms_per_request'):>8.3f} ms "
                f"{c.median('redis_cpu_ms_per_request'):>11.3f} ms "
                f"{c.median('redis_commands_per_request'):>15.1f}"
            )
    lines.append("")
    for ours, bare in pairs:
        rps = ours.median("requests_per_s") / bare.median("requests_per_s")
        p99 = ours.median("p99_ms") / bare.median("p99_ms")
        cpu = ours.median("cpu_ms_per_request") / bare.median("cpu_ms_per_request")
        redis_cpu = ours.median("redis_cpu_ms_per_request") / bare.median(
            "redis_cpu_ms_per_request"
        )
        per_round = ", ".join(
            f"{a.requests_per_s / b.requests_per_s:.2f}"
            for a, b in zip(ours.runs, bare.runs, strict=True)
        )
        lines.append(
            f"{ours.name} / bare: req/s {rps:.2f} (target >= {TARGET_RATIO}; "
            f"per round {per_round}), p99 {p99:.2f} (target <= {TARGET_P99_RATIO}), "
            f"CPU/req {cpu:.2f}, Redis CPU/req {redis_cpu:.2f}"
        )
    failed = {c.name: sum(r.failed for r in c.runs) for pair in pairs for c in pair}
    if any(failed.values()):
        lines.append(f"failed requests (non-2xx or socket errors): {failed}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0, help="of each run")
    parser.add_argument("--only", choices=["submit", "read"], help="one of the two pairs")
    args = parser.parse_args()
    generator = "wrk" if shutil.which("wrk") else "python (bench.loadgen; wrk is not installed)"
    load = LoadGenerator(generator, THREADS, CONNECTIONS, args.duration_s)
    conveyor, bare = Server("conveyor", "conveyor_api"), Server("bare", "bench.bare_app")
    pairs = [
        (
            Contender("conveyor POST /v1/jobs/noop", conveyor, "POST", "/v1/jobs/noop", True),
            Contender("bare POST /task", bare, "POST", "/task", False),
        ),
        (
            Contender("conveyor GET /v1/jobs/{id}", conveyor, "GET", "/v1/jobs/{job_id}", True),
            Contender("bare GET /job/{id} (HGETALL)", bare, "GET", "/job/{job_id}", False),
        ),
    ]
    if args.only:
        pairs = pairs[:1] if args.only == "submit" else pairs[1:]
    redis_server = local_redis_process()
    redis_server.start()
    try:
        with (
            serving([conveyor, bare], redis_server.url),
            redis_sync.Redis.from_url(redis_server.url) as redis,
        ):
            warm_up = LoadGenerator(load.name, THREADS, CONNECTIONS, 2)
            for pair in pairs:
                for contender in pair:
                    measure(contender, warm_up, redis, fresh_job(redis, conveyor))
            for round_ in range(args.rounds):
                for pair in pairs:
                    # Alternate who goes first, so drift on a shared machine hits both alike.
                    for contender in pair if round_ % 2 == 0 else pair[::-1]:
                        print(f"round {round_ + 1}: {contender.name} ...", flush=True)
                        job_id = fresh_job(redis, conveyor)
                        contender.runs.append(measure(contender, load, redis, job_id))
    finally:
        redis_server.stop()
    print(report(pairs, load, args.rounds))


if __name__ == "__main__":
    main()
