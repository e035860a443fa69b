"""The cluster's Redis work per job in instructions, not CPU time.

`python -m bench.cluster_instructions` (not part of `make bench`: it needs
valgrind, and takes a few minutes). bench/cluster.py reads each node's CPU
time, which on a machine with fewer cores than the cluster has processes
counts their contention too: the same commands take longer when six
`redis-server`s and the worker share two cores. Here every node runs under
callgrind, which counts the instructions each one executes in user space
(exactly, whatever else runs), so the setups compare by the work itself.

The setups are bench/cluster.py's (`contenders`, but for the paced ones),
with JOBS no-op jobs each: one node (its queue in one shard, and in three),
one node with a replica, one process in cluster mode, and the cluster of
three primaries without replicas and with one each. Each node's count is
zeroed before the jobs are submitted and read after they are drained, less
the count of an idle window as long (`serverCron`, the cluster bus). What
this leaves out: the kernel's part (system calls, the network stack), which
callgrind does not see.
"""

import asyncio
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_sync
import uvloop

from bench import cluster as bench
from bench.jobs import Noop
from conveyor_core.enqueue import enqueue

JOBS = 500


def wrapper(directory: Path) -> str:
    """An executable that runs `redis-server` under callgrind, its counts in `directory`."""
    server = shutil.which("redis-server") or "redis-server"
    path = directory / "redis-server-callgrind"
    out = directory / "callgrind.%p"
    path.write_text(
        f'#!/bin/sh\nexec valgrind --tool=callgrind -q --callgrind-out-file={out} {server} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


class Counters:
    """callgrind_control on each node: zero its count, or read it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def zero(self, pids: list[int]) -> None:
        for pid in pids:
            self._control("-z", pid)

    def read(self, pids: list[int]) -> list[int]:
        counts = []
        for pid in pids:
            for old in glob.glob(f"{self.directory}/callgrind.{pid}.*"):
                os.remove(old)
            self._control("-d", pid)
            dumps = sorted(glob.glob(f"{self.directory}/callgrind.{pid}.*"))
            found = re.search(r"^summary: (\d+)", Path(dumps[-1]).read_text(), re.MULTILINE)
            if found is None:
                raise RuntimeError(f"no summary in {dumps[-1]}")
            counts.append(int(found.group(1)))
        return counts

    def _control(self, flag: str, pid: int) -> None:
        control = shutil.which("callgrind_control") or "callgrind_control"
        subprocess.run([control, flag, str(pid)], check=True, capture_output=True)  # noqa: S603


def pid_of(node: redis_sync.Redis) -> int:
    return int(bench.info(node, "server")["process_id"])


async def instructions_per_job(setup: bench.Setup, counters: Counters) -> tuple[float, float]:
    """Instructions per job over the primaries, and over the replicas."""
    bench.flush(setup)
    bench.STARTED.clear()
    pids = [pid_of(node) for node in setup.primaries + setup.replicas]
    async with bench.worker_on(setup) as (worker, store):
        job_type = store.catalog[bench.JOB_TYPE]
        await asyncio.sleep(1.0)  # start-up traffic passes
        counters.zero(pids)
        started_s = time.perf_counter()
        for start in range(0, JOBS, 100):
            batch = range(start, min(start + 100, JOBS))
            await asyncio.gather(*(enqueue(store, job_type, Noop()) for _ in batch))
        async with asyncio.timeout(600):
            while len(bench.STARTED) < JOBS or worker.running:  # noqa: ASYNC110  # a local dict
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # the replicas apply the last writes
        elapsed_s = time.perf_counter() - started_s
        worked = counters.read(pids)
        counters.zero(pids)
        await asyncio.sleep(elapsed_s)
        idle = counters.read(pids)
    net = [w - i for w, i in zip(worked, idle, strict=True)]
    primaries = len(setup.primaries)
    return sum(net[:primaries]) / JOBS, sum(net[primaries:]) / JOBS


async def run() -> None:
    directory = Path(tempfile.mkdtemp(prefix="conveyor-callgrind-"))
    try:
        counters = Counters(directory)
        with bench.contenders(wrapper(directory)) as contenders:
            # A pace changes no instruction count: the paced setups would repeat others.
            unpaced = [s for s in contenders if s.pace_jobs_per_s is None]
            figures = {s.name: await instructions_per_job(s, counters) for s in unpaced}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    base = sum(figures["one node, 1 shard"])
    held = sum(figures["one node + replica, 1 shard"])
    print(f"user-space instructions per job (callgrind), {JOBS} jobs a setup")
    print(
        f"  {'setup':<28} {'primaries':>10} {'replicas':>10} {'all nodes':>10} {'/ one node':>10}"
    )
    for name, (primaries, replicas) in figures.items():
        total = primaries + replicas
        print(
            f"  {name:<28} {primaries:>10,.0f} {replicas:>10,.0f} {total:>10,.0f}"
            f" {total / base:>10.2f}"
        )
    full = sum(figures[f"cluster 3+3, {bench.SHARDS} shards"])
    print(f"  cluster 3+3 / one node + replica: {full / held:.2f}")


def main() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    uvloop.run(run())


if __name__ == "__main__":
    main()
