"""Pickup latency, throughput, Redis cost and memory: Conveyor's worker against bare arq.

`make bench` runs each worker as its own process on the same Redis, one after
the other in one run, and prints the figures side by side with ratios, then
each target of the worker with its figure. Conveyor runs as shipped: JSON
logs, metrics, and spans exported over OTLP/HTTP to a local receiver that
drops them.

The throughput rounds measure the case that shows Conveyor's Redis cost at its
worst: a queue other than arq's default for both, one try per job (max_tries
1), and a client polling a counter every 5 ms while the queue drains. The cost
per job (Redis CPU and commands) is taken over the drain alone, from just
before the jobs fall due to the last one's end: a window that also held the
enqueueing head start would add a polling worker's idle cost (bare arq's) to
its cost per job.
"""

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from arq.connections import ArqRedis
from arq.jobs import Job

from bench.jobs import CONVEYOR_QUEUE, DONE_KEY, JOB_TYPES, RECORD_COMMANDS, STARTED_KEY, Noop
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.local.redis_server import free_port, resolve_redis
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_core.tracing import setup_tracing

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = REPO_ROOT / "test-artifacts" / "bench"
IDLE_WINDOW_S = 10.0
THROUGHPUT_JOBS = 3000
THROUGHPUT_ROUNDS = 3
# Time to enqueue a round's jobs before they fall due, ample on a busy machine.
ENQUEUE_HEAD_START_S = 10.0
# The drain window opens this long before the jobs fall due (nothing runs yet).
DRAIN_LEAD_S = 0.05
# How often the client reads the done counter while the queue drains: a
# dashboard or a waiting client, as in a real deployment (and its cost in
# Redis CPU is the same for both contenders).
DRAIN_POLL_S = 0.005
NOOP = JOB_TYPES[0]


@dataclass
class Contender:
    name: str
    queue: str
    samples: int
    poll_delay_s: float | None = None  # None: Conveyor's worker
    env: dict[str, str] = field(default_factory=dict)  # Conveyor's worker: more settings
    job_type: str = "noop"  # Conveyor's: the no-op job type it runs (bench/jobs.py)
    # From the moment the enqueue call returned (the job is in Redis) to the
    # job function's start: the pickup itself.
    latencies_ms: list[float] = field(default_factory=list)
    # From the moment the enqueue call began: pickup plus the enqueue itself.
    end_to_end_ms: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)  # jobs/s, one per round
    # Per job in the throughput rounds: the cost, which a busy machine does not blur
    # the way it blurs jobs/s.
    worker_cpu_ms: list[float] = field(default_factory=list)
    redis_cpu_ms: list[float] = field(default_factory=list)
    # Redis commands per job: enqueueing it, and processing it (less the job
    # body's own, RECORD_COMMANDS), one per round each.
    enqueue_commands: list[float] = field(default_factory=list)
    processing_commands: list[float] = field(default_factory=list)
    memory_per_queued_job_b: float = 0.0
    # An api process beside Conveyor's worker, serving no SSE stream: its CPU
    # (% of a core) while the worker runs jobs as fast as it can.
    api_pid: int = 0
    api_cpu_pct: list[float] = field(default_factory=list)
    pid: int = 0
    idle_commands_per_s: float = 0.0

    def command(self, redis_url: str) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_URL": redis_url}
        if self.poll_delay_s is not None:
            args = ["-m", "bench.arq_worker", self.queue, str(self.poll_delay_s), redis_url]
            return [sys.executable, *args], env
        env.update(
            CONVEYOR_JOB_MODULES="bench.jobs",
            CONVEYOR_WORKER_QUEUE=self.queue,
            CONVEYOR_WORKER_HEALTH_PORT=str(free_port()),
        )
        env.update(self.env)
        return [sys.executable, "-m", "conveyor_worker"], env

    @property
    def jobs_per_s(self) -> float:
        return statistics.median(self.throughputs)

    def percentile_ms(self, q: float, samples: list[float] | None = None) -> float:
        ordered = sorted(self.latencies_ms if samples is None else samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def submit(contender: Contender, redis: ArqRedis, store: JobStore, **defer: float) -> str:
    """Enqueue one no-op job the way each contender's users would."""
    if contender.poll_delay_s is None:
        run_at = defer.get("run_at")
        submitted = await enqueue(
            store,
            store.catalog[contender.job_type],
            Noop(),
            run_at=None if run_at is None else _dt(run_at),
        )
        return submitted.job_id
    run_at = defer.get("run_at")
    job = await redis.enqueue_job(
        "noop", _queue_name=contender.queue, _defer_until=None if run_at is None else _dt(run_at)
    )
    assert job is not None
    return str(job.job_id)


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


async def total_commands(redis: ArqRedis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of a process so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cpu_s(redis: ArqRedis) -> float:
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def measure_idle(contender: Contender, redis: ArqRedis) -> None:
    await asyncio.sleep(1)  # let start-up traffic pass
    before = await total_commands(redis)
    await asyncio.sleep(IDLE_WINDOW_S)
    after = await total_commands(redis)
    contender.idle_commands_per_s = (after - before - 1) / IDLE_WINDOW_S  # less our INFO


async def measure_pickup(contender: Contender, redis: ArqRedis, store: JobStore) -> None:
    """Idle pickup: one job at a time, sent at a random phase of any poll tick."""
    started_key = STARTED_KEY.format(queue=contender.queue)
    phase_s = max(contender.poll_delay_s or 0.0, 0.02)
    for _ in range(contender.samples):
        await redis.delete(started_key)
        await asyncio.sleep(random.uniform(0.005, phase_s))  # noqa: S311
        sent = time.time()
        await submit(contender, redis, store)
        enqueued = time.time()
        # BLPOP, not polling: the client must not steal the worker's CPU.
        _, started = await redis.blpop([started_key], timeout=10)  # type: ignore[misc]
        contender.latencies_ms.append((float(started) - enqueued) * 1000)
        contender.end_to_end_ms.append((float(started) - sent) * 1000)


async def measure_throughput(contender: Contender, redis: ArqRedis, store: JobStore) -> None:
    done_key = DONE_KEY.format(queue=contender.queue)
    await redis.delete(done_key)
    due = time.time() + ENQUEUE_HEAD_START_S
    before_enqueue = await total_commands(redis)
    for start in range(0, THROUGHPUT_JOBS, 100):
        batch = range(start, min(start + 100, THROUGHPUT_JOBS))
        await asyncio.gather(*(submit(contender, redis, store, run_at=due) for _ in batch))
    assert time.time() < due - DRAIN_LEAD_S, "enqueueing took longer than the head start"
    # Less our INFO; with what the worker does when an enqueue wakes it.
    enqueued = await total_commands(redis) - before_enqueue - 1
    contender.enqueue_commands.append(enqueued / THROUGHPUT_JOBS)
    # The drain window: from just before the jobs fall due.
    await asyncio.sleep(max(0.0, due - DRAIN_LEAD_S - time.time()))
    worker_cpu_s, server_cpu_s = process_cpu_s(contender.pid), await redis_cpu_s(redis)
    api_cpu_s = process_cpu_s(contender.api_pid) if contender.api_pid else 0.0
    commands, polls = await total_commands(redis), 0
    while int(await redis.get(done_key) or 0) < THROUGHPUT_JOBS:
        polls += 1
        await asyncio.sleep(DRAIN_POLL_S)
    elapsed_s = time.time() - due
    contender.throughputs.append(THROUGHPUT_JOBS / elapsed_s)
    if contender.api_pid:
        api_cpu = process_cpu_s(contender.api_pid) - api_cpu_s
        contender.api_cpu_pct.append(100 * api_cpu / elapsed_s)
    per_job_ms = 1000 / THROUGHPUT_JOBS
    contender.worker_cpu_ms.append((process_cpu_s(contender.pid) - worker_cpu_s) * per_job_ms)
    contender.redis_cpu_ms.append((await redis_cpu_s(redis) - server_cpu_s) * per_job_ms)
    # Less our own polls, the INFO calls and the last GET, and the job bodies' own.
    ours = polls + 3 + RECORD_COMMANDS * THROUGHPUT_JOBS
    contender.processing_commands.append(
        (await total_commands(redis) - commands - ours) / THROUGHPUT_JOBS
    )


async def wait_ready(contender: Contender, redis: ArqRedis, store: JobStore) -> None:
    job_id = await submit(contender, redis, store)
    if contender.poll_delay_s is not None:  # bare arq keeps its result
        await Job(job_id, redis, _queue_name=contender.queue).result(timeout=30, poll_delay=0.05)
        return
    async with asyncio.timeout(30):
        while (job := await store.get(job_id)) is None or job.state != "complete":  # noqa: ASYNC110  # polls Redis, not a local flag
            await asyncio.sleep(0.05)


def client(contender: Contender, redis_url: str) -> ArqRedis:
    """A client that enqueues as the contender's users do: Conveyor's pool writes
    JSON job data; bare arq's client keeps arq's default serializer, pickle."""
    redis = create_redis(RedisSettings(url=redis_url))
    if contender.poll_delay_s is not None:
        redis.job_serializer = redis.job_deserializer = None
    return redis


@asynccontextmanager
async def running(contender: Contender, redis_url: str) -> AsyncIterator[tuple[ArqRedis, JobStore]]:
    """The contender's worker as its own process, ready, with a client."""
    command, env = contender.command(redis_url)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (LOG_DIR / f"{contender.queue.replace(':', '-')}.log").open("ab")
    worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603, ASYNC220
    contender.pid = worker.pid
    redis = client(contender, redis_url)
    store = JobStore(redis, load_catalog(["bench.jobs"]))
    try:
        await wait_ready(contender, redis, store)
        yield redis, store
    finally:
        await redis.aclose()
        worker.send_signal(signal.SIGTERM)
        # In a thread: the loop keeps answering the worker's last span export.
        await asyncio.to_thread(worker.wait, 30)
        log.close()


MEMORY_JOBS = 20_000


async def measure_memory(contender: Contender, redis_url: str) -> None:
    """Redis memory a queued job costs: MEMORY_JOBS jobs due in a day, no worker."""
    redis = client(contender, redis_url)
    store = JobStore(redis, load_catalog(["bench.jobs"]))
    try:
        await redis.flushdb()
        before = int((await redis.info("memory"))["used_memory"])
        due = time.time() + 86_400
        for start in range(0, MEMORY_JOBS, 500):
            batch = range(start, min(start + 500, MEMORY_JOBS))
            await asyncio.gather(*(submit(contender, redis, store, run_at=due) for _ in batch))
        after = int((await redis.info("memory"))["used_memory"])
        contender.memory_per_queued_job_b = (after - before) / MEMORY_JOBS
        await redis.flushdb()
    finally:
        await redis.aclose()


class DropReceiver:
    """An OTLP/HTTP endpoint on loopback that accepts every export and keeps nothing."""

    async def __aenter__(self) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while head := await reader.readuntil(b"\r\n\r\n"):
                    length = next(
                        (
                            int(line.split(b":", 1)[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    await reader.readexactly(length)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()


def commands_per_job(c: Contender) -> tuple[float, float, float]:
    """Medians over the rounds: enqueue, processing, and their sum per round."""
    totals = [e + p for e, p in zip(c.enqueue_commands, c.processing_commands, strict=True)]
    return (
        statistics.median(c.enqueue_commands),
        statistics.median(c.processing_commands),
        statistics.median(totals),
    )


def cost_lines(contenders: list[Contender]) -> list[str]:
    """Cost per job: medians over the throughput rounds."""
    lines = [
        f"{'per job':<24} {'worker CPU':>11} {'Redis CPU':>10} {'cmds: enqueue':>14} "
        f"{'+ processing':>13} {'= total':>8} {'queued job':>11}"
    ]
    for c in contenders:
        enqueue_, processing, total = commands_per_job(c)
        memory = f"{c.memory_per_queued_job_b:>9.0f} B" if c.memory_per_queued_job_b else ""
        lines.append(
            f"{c.name:<24} {statistics.median(c.worker_cpu_ms):>8.3f} ms "
            f"{statistics.median(c.redis_cpu_ms):>7.3f} ms {enqueue_:>14.1f} "
            f"{processing:>13.1f} {total:>8.1f} {memory:>11}"
        )
    lines.append(
        f"(commands: INFO commandstats; processing leaves out the no-op job's own "
        f"{RECORD_COMMANDS} commands)"
    )
    return lines


@asynccontextmanager
async def idle_api(redis_url: str) -> AsyncIterator[int]:
    """An api process on the bench's Redis that no client talks to: its pid."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CONVEYOR_API_PORT": str(free_port()),
        "CONVEYOR_API_DEVELOPMENT": "true",
        "CONVEYOR_JOB_MODULES": "bench.jobs",
        "PYTHONPATH": str(REPO_ROOT),
    }
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "api.log").open("ab") as log:
        api = subprocess.Popen(  # noqa: ASYNC220  # started once, before any measuring
            [sys.executable, "-m", "conveyor_api"], env=env, stdout=log, stderr=log
        )
        try:
            await asyncio.sleep(3)  # started and idle
            yield api.pid
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)


def cost_ratios(ours: Contender, theirs: Contender) -> list[str]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    api = f"{med(ours.api_cpu_pct):.1f} %" if ours.api_cpu_pct else "not measured"
    return [
        f"per job, {ours.name} / {theirs.name}:",
        f"  Redis CPU {med(ours.redis_cpu_ms) / med(theirs.redis_cpu_ms):.2f}",
        f"  Redis commands {commands_per_job(ours)[2]:.1f} / {commands_per_job(theirs)[2]:.1f} "
        f"= {commands_per_job(ours)[2] / commands_per_job(theirs)[2]:.2f}",
        f"  worker CPU {med(ours.worker_cpu_ms) / med(theirs.worker_cpu_ms):.2f}",
        f"  jobs/s {ours.jobs_per_s / theirs.jobs_per_s:.2f}",
        f"  memory per queued job "
        f"{ours.memory_per_queued_job_b / theirs.memory_per_queued_job_b:.2f}",
        f"api CPU with no SSE client while the worker runs flat out: {api} of a core "
        "(target < 5 %)",
    ]


@dataclass(frozen=True, slots=True)
class Target:
    """One of the worker's targets, with what this run measured."""

    name: str
    figure: float
    bound: float
    at_least: bool  # the figure must be >= bound (else <=)
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.figure >= self.bound if self.at_least else self.figure <= self.bound

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        figure = f"{self.figure:.2f}{self.unit}"
        bound = f"{sign} {self.bound:g}{self.unit}"
        return f"  {self.name:<58} {figure:>10}  {bound:<11} {'met' if self.met else 'MISSED'}"


def targets(
    fast: Contender, ours: Contender, instrumented: Contender, bare: Contender
) -> list[Target]:
    """The worker's targets against bare arq at a 0.01 s poll (`fast`)."""
    med = statistics.median
    return [
        Target(
            "jobs/s, every span exported over OTLP / arq poll 0.01 s",
            ours.jobs_per_s / fast.jobs_per_s,
            1.3,
            at_least=True,
        ),
        Target(
            "jobs/s, instrumentation on / off",
            instrumented.jobs_per_s / bare.jobs_per_s,
            0.75,
            at_least=True,
        ),
        Target(
            "Redis CPU per job over the drain / arq poll 0.01 s",
            med(ours.redis_cpu_ms) / med(fast.redis_cpu_ms),
            0.9,
            at_least=False,
        ),
        Target(
            "Redis commands per job, enqueue and processing",
            commands_per_job(ours)[2],
            26,
            at_least=False,
        ),
        Target(
            "Redis memory per queued job / arq",
            ours.memory_per_queued_job_b / fast.memory_per_queued_job_b,
            1.2,
            at_least=False,
        ),
        Target("idle pickup p50", ours.percentile_ms(0.5), 3, at_least=False, unit=" ms"),
        Target("idle Redis commands/s", ours.idle_commands_per_s, 10, at_least=False),
    ]


def target_lines(found: list[Target]) -> list[str]:
    missed = [t.name for t in found if not t.met]
    return [
        "targets (conveyor with spans over OTLP, against arq at a 0.01 s poll):",
        *(t.line() for t in found),
        f"{len(found) - len(missed)} of {len(found)} met"
        + (f"; missed: {', '.join(missed)}" if missed else ""),
    ]


def ratio(ours: Contender, theirs: Contender) -> float:
    return ours.percentile_ms(0.5) / theirs.percentile_ms(0.5)


def report(contenders: list[Contender]) -> str:
    lines = [
        "pickup: enqueue returned -> job started; with enqueue: enqueue called -> job started",
        f"{'worker':<20} {'pickup p50':>11} {'p99':>10} {'with enqueue p50':>17} "
        f"{'jobs/s':>8} {'idle cmds/s':>12}",
    ]
    for c in contenders:
        lines.append(
            f"{c.name:<20} {c.percentile_ms(0.5):>8.2f} ms {c.percentile_ms(0.99):>7.2f} ms "
            f"{c.percentile_ms(0.5, c.end_to_end_ms):>14.2f} ms "
            f"{c.jobs_per_s:>8.0f} {c.idle_commands_per_s:>12.1f}"
        )
    default, fast, ours = contenders
    lines += [
        "",
        f"pickup p50: conveyor / arq default = {ratio(ours, default):.3f}",
        f"pickup p50: conveyor / arq poll 0.01 s = {ratio(ours, fast):.3f}",
        f"throughput (median of {THROUGHPUT_ROUNDS} alternating rounds): "
        f"conveyor / arq poll 0.01 s = {ours.jobs_per_s / fast.jobs_per_s:.2f}",
        f"throughput: conveyor / arq default = {ours.jobs_per_s / default.jobs_per_s:.2f}",
        f"idle Redis commands/s: conveyor {ours.idle_commands_per_s:.1f}, "
        f"arq poll 0.01 s {fast.idle_commands_per_s:.1f}",
    ]
    return "\n".join(lines)


# Instrumentation on (the default: spans, job start/end log lines, metrics) and off.
INSTRUMENTED = Contender(
    "conveyor, instrumented", CONVEYOR_QUEUE, samples=0, env={"CONVEYOR_WORKER_LOG_LEVEL": "INFO"}
)
BARE = Contender(
    "conveyor, bare",
    CONVEYOR_QUEUE,
    samples=0,
    env={"CONVEYOR_WORKER_INSTRUMENT_JOBS": "false", "OTEL_SDK_DISABLED": "true"},
)


async def instrumentation_cost(redis_url: str) -> str:
    for round_ in range(THROUGHPUT_ROUNDS):
        for contender in (INSTRUMENTED, BARE):
            print(f"instrumentation round {round_ + 1}: {contender.name} ...", flush=True)
            async with running(contender, redis_url) as (redis, store):
                await measure_throughput(contender, redis, store)
    return (
        f"no-op jobs/s with tracing, JSON job logs and metrics: {INSTRUMENTED.jobs_per_s:.0f}; "
        f"without: {BARE.jobs_per_s:.0f}; ratio {INSTRUMENTED.jobs_per_s / BARE.jobs_per_s:.2f}"
    )


async def throughput_only(contenders: list["Contender"]) -> None:
    """`python -m bench.pickup throughput`: only the throughput rounds, quicker to iterate on."""
    fast, ours = contenders[1:]
    with resolve_redis() as resolved:
        for contender in (fast, ours):
            await measure_memory(contender, resolved.url)
        async with idle_api(resolved.url) as api_pid:
            ours.api_pid = api_pid
            await throughput_rounds(fast, ours, resolved.url)
    pairs = zip(ours.throughputs, fast.throughputs, strict=True)
    rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in pairs)
    print(
        "\n".join([*cost_lines([fast, ours]), *cost_ratios(ours, fast)]),
        f"\njobs/s per round, conveyor/arq: {rounds}\n"
        f"throughput (median of {THROUGHPUT_ROUNDS} alternating rounds): "
        f"conveyor / arq poll 0.01 s = {ours.jobs_per_s / fast.jobs_per_s:.2f} (target >= 1.3)",
    )


async def instrumentation_only() -> None:
    """`python -m bench.pickup instrumentation`: only the on/off rounds."""
    with resolve_redis() as resolved:
        cost = await instrumentation_cost(resolved.url)
    print("\n".join(cost_lines([INSTRUMENTED, BARE])))
    print(cost, "(target >= 0.75)")


# Instrumentation taken apart in place: each contender turns one part off more
# than the one before it. A part's cost measured alone (a micro-benchmark) is
# about half what it costs among a worker's other work, so the parts are
# measured where they run.
PARTS = [
    INSTRUMENTED,
    Contender("  less the export", CONVEYOR_QUEUE, samples=0, env=dict(INSTRUMENTED.env)),
    Contender("  less spans", CONVEYOR_QUEUE, samples=0, env={"OTEL_SDK_DISABLED": "true"}),
    Contender(
        "  less the job end line",
        CONVEYOR_QUEUE,
        samples=0,
        env={"OTEL_SDK_DISABLED": "true", "CONVEYOR_WORKER_LOG_LEVEL": "WARNING"},
    ),
    BARE,
]


async def instrumentation_parts() -> None:
    """`python -m bench.pickup instrumentation-parts`: worker CPU per job as the
    parts of the instrumentation come off one by one, alternating rounds."""
    with resolve_redis() as resolved:
        for round_ in range(THROUGHPUT_ROUNDS):
            for contender in PARTS:
                print(f"parts round {round_ + 1}: {contender.name.strip()} ...", flush=True)
                async with running(contender, resolved.url) as (redis, store):
                    await measure_throughput(contender, redis, store)
    lines = [f"{'worker CPU per job':<24} {'median':>9} {'step':>8}   rounds"]
    previous = None
    for c in PARTS:
        cpu_us = statistics.median(c.worker_cpu_ms) * 1000
        step = f"{previous - cpu_us:>5.0f} us" if previous is not None else ""
        rounds = ", ".join(f"{ms * 1000:.0f}" for ms in c.worker_cpu_ms)
        lines.append(f"{c.name:<24} {cpu_us:>6.0f} us {step:>8}   {rounds}")
        previous = cpu_us
    print("\n".join(lines))


async def throughput_rounds(fast: Contender, ours: Contender, redis_url: str) -> None:
    for round_ in range(THROUGHPUT_ROUNDS):
        for contender in (fast, ours):
            print(f"throughput round {round_ + 1}: {contender.name} ...", flush=True)
            async with running(contender, redis_url) as (redis, store):
                await measure_throughput(contender, redis, store)


async def main() -> None:
    # The client traces as the api does, so each job carries a traceparent.
    setup_tracing("bench")
    contenders = [
        Contender("arq (poll 0.5 s)", "bench:arq-default", samples=60, poll_delay_s=0.5),
        Contender("arq (poll 0.01 s)", "bench:arq-fast", samples=300, poll_delay_s=0.01),
        Contender("conveyor", CONVEYOR_QUEUE, samples=300),
    ]
    async with DropReceiver() as otlp:
        # Spans exported as a user's would be, to a receiver that drops them.
        for c in (contenders[2], INSTRUMENTED):
            c.env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_EXPORTER": "otlp"}
        if sys.argv[1:] == ["instrumentation-parts"]:
            await instrumentation_parts()
            return
        if sys.argv[1:] == ["throughput"]:
            await throughput_only(contenders)
            return
        if sys.argv[1:] == ["instrumentation"]:
            await instrumentation_only()
            return
        await all_rounds(contenders)


async def all_rounds(contenders: list[Contender]) -> None:
    with resolve_redis() as resolved:
        for contender in contenders[1:]:
            await measure_memory(contender, resolved.url)
        for contender in contenders:
            print(f"latency and idle cost: {contender.name} ...", flush=True)
            async with running(contender, resolved.url) as (redis, store):
                await measure_idle(contender, redis)
                await measure_pickup(contender, redis, store)
        # Throughput in alternating rounds, so drift on a shared machine hits all alike.
        async with running(contenders[0], resolved.url) as (redis, store):
            await measure_throughput(contenders[0], redis, store)
        async with idle_api(resolved.url) as api_pid:
            contenders[2].api_pid = api_pid
            await throughput_rounds(contenders[1], contenders[2], resolved.url)
        cost = await instrumentation_cost(resolved.url)
    print(report(contenders))
    print("\n".join(cost_lines([*contenders, INSTRUMENTED, BARE])))
    print("\n".join(cost_ratios(contenders[2], contenders[1])))
    print(cost)
    print()
    print("\n".join(target_lines(targets(contenders[1], contenders[2], INSTRUMENTED, BARE))))


if __name__ == "__main__":
    uvloop.run(main())  # the client's own overhead, kept small and the same for all
