"""`make bench`: run every bench and write their reports into docs/benchmarks.md,
with the machine and the date, so figures live in one generated page and
never in prose.

    python -m bench.report          # run every bench of BENCHES
"""

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from conveyor_core.local.redis_server import resolve_redis

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = REPO_ROOT / "docs" / "benchmarks.md"
BENCHES = (
    ("Worker: pickup, throughput and cost against bare arq", "bench.pickup"),
    ("Flow control: priority pickup under a backlog, and the cost of limits", "bench.flow"),
    ("HTTP: the api against a bare FastAPI + arq app", "bench.http"),
    ("Blobs: Redis memory per stored byte, and uploads through the api", "bench.blobs"),
    ("Groups: fan-in's Redis cost, the continuation's start, batch submits", "bench.groups"),
    ("Cluster: one queue over three shards against one node", "bench.cluster"),
)

INTRO = """\
Written by `make bench` (bench/report.py); do not edit: run it again instead.
Figures move with the machine and whatever else runs on it, so compare runs
of one machine, and read the ratios (each bench runs its contenders in
alternating rounds of one run) before the absolute numbers.

- **Worker** (`bench/pickup.py`): Conveyor's worker and bare arq (its default
  0.5 s poll, and 0.01 s) as separate processes on one Redis. Pickup runs from
  the moment the enqueue call returned to the job function's start;
  throughput is the median of alternating rounds of no-op jobs; the cost per
  job (worker CPU, Redis CPU, Redis commands) hardly moves with load. The
  rounds are the case that shows Conveyor's Redis cost at its worst (a queue
  other than arq's default, one try per job, a client polling a counter every
  5 ms), and the cost is taken over the drain alone. It also measures the
  instrumentation's cost (spans, JSON logs, metrics on and off), and ends
  with each of the worker's targets, met or missed.
- **Flow control** (`bench/flow.py`): a priority-0 job's pickup while a
  backlog of priority-9 jobs waits and every slot is busy, and the Redis cost
  per job of a type with limits that never bind against one without.
- **HTTP** (`bench/http.py`): Conveyor's api as shipped (api key, rate
  limit, spans, logs, metrics) against a bare FastAPI + arq app, one uvicorn
  process each, loaded by `wrk` (or a Python load generator where `wrk` is
  missing; the report says which).
- **Cluster** (`bench/cluster.py`): one queue over three shards on the local
  Redis Cluster (three primaries, with three replicas and without),
  against one `redis-server` of the same binary, with Conveyor's worker in
  the bench's process; Redis CPU per job summed over every node (each less
  its idle rate; primaries and replicas apart too) and commands per job,
  each shard's share of the jobs, idle pickup and memory per queued job,
  and what shards and cluster mode each cost apart. The target compares
  every node of the test cluster (replicas included) with the one node, as
  the issue defines it; the cluster without replicas is printed beside it."""


@dataclass(frozen=True, slots=True)
class Machine:
    cores: int
    cpu: str
    python: str
    redis: str
    system: str


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def this_machine() -> Machine:
    with resolve_redis() as server, redis.Redis.from_url(server.url) as client:
        info = client.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    version = info.get("valkey_version", info.get("redis_version", "unknown"))
    return Machine(
        cores=os.cpu_count() or 0,
        cpu=cpu_model(),
        python=platform.python_version(),
        redis=f"{name} {version}",
        system=f"{platform.system()} {platform.release()}",
    )


def report_lines(output: str) -> str:
    """A bench's stdout without its progress lines ("... round 2: arq ...")."""
    kept = [line for line in output.splitlines() if not line.rstrip().endswith(" ...")]
    return "\n".join(kept).strip()


def page(machine: Machine, when: datetime, reports: list[tuple[str, str, str]]) -> str:
    """The page: the machine, the date, then each bench's report as printed."""
    lines = [
        "# Benchmarks",
        "",
        INTRO,
        "",
        "| machine | |",
        "| --- | --- |",
        f"| date | {when.strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| cores | {machine.cores} |",
        f"| CPU | {machine.cpu} |",
        f"| system | {machine.system} |",
        f"| Python | {machine.python} |",
        f"| Redis | {machine.redis} |",
        "",
    ]
    for title, module, output in reports:
        lines += [f"## {title}", "", f"`python -m {module}`:", "", "```", output, "```", ""]
    return "\n".join(lines)


def run(module: str) -> str:
    """Run one bench, its output passed through to the terminal as it comes."""
    process = subprocess.Popen(  # noqa: S603 - our own modules
        [sys.executable, "-m", module], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert process.stdout is not None
    captured = []
    for line in process.stdout:
        sys.stdout.write(line)
        captured.append(line)
    if process.wait() != 0:
        raise SystemExit(f"{module} failed with exit code {process.returncode}")
    return report_lines("".join(captured))


def main() -> int:
    machine = this_machine()
    reports = [(title, module, run(module)) for title, module in BENCHES]
    PAGE.write_text(page(machine, datetime.now(UTC), reports))
    print(f"wrote {PAGE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
