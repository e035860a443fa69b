"""One queue over three shards on a local Redis Cluster, against one node.

`python -m bench.cluster` (part of `make bench`) starts the test cluster
(tests/support/cluster.py: three primaries, three replicas, `redis-server`
on loopback), the same cluster without replicas, one `redis-server` of the
same binary and settings, and one more in cluster mode serving every slot
alone, and runs Conveyor's worker in this process on each:

- **cost**, in alternating rounds: THROUGHPUT_JOBS no-op jobs enqueued and
  drained while the worker runs; Redis CPU (INFO cpu) and time in commands
  (INFO commandstats) per job, each node less its idle rate measured just
  before (the cluster bus and `serverCron` cost a node CPU with no job at
  all), summed over the primaries and, apart, over the replicas. Six
  setups: one node with the queue in one shard (today's layout) and in
  three (what shards cost by themselves), one node with a replica (the
  cluster's durability on one node), one process in cluster mode with
  three (what cluster mode costs), and three primaries with three shards,
  without replicas and with one each.
- **the target's figure**: Redis CPU per job summed over every node of the
  test cluster (three primaries, three replicas), over the one node's (1
  shard) in the same run, as the issue defines it. The cluster without
  replicas is printed beside it, to show what the replicas add and, with
  its "in commands" against the one process in cluster mode, what three
  processes sharing a small machine's cores add to each command with the
  same commands (contention, not work Conveyor asks for). Beside it too,
  the cluster against one node with a replica: each write kept twice in
  both.
- **at the same rate**: a node's CPU per job falls as its load rises (more
  commands per wake-up of its event loop), and at full speed each setup runs
  at its own rate. The one node and the cluster without replicas run again
  with submits paced at PACE_JOBS_PER_S, and their ratio is printed too.
- **spread**: the share of the jobs each shard took.
- **pickup**: one job at a time, from the moment the enqueue call returned
  to the job's start, with the worker idle.
- **memory**: used_memory per job waiting (deferred), summed over the
  primaries: what a backlog costs a shard.

bench/cluster_instructions.py runs the same setups with every node under
callgrind: the work per job in instructions, which this machine's
contention does not move.

The queue's name is chosen so that its three shards' slots are served by
three different primaries (a shard's slot is where its name hashes; a real
cluster places slots by its slot map, see docs/how-to/capacity.md). The
worker runs in this process with instrumentation off: its own CPU is no
figure here.
"""

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync
import uvloop
from redis.crc import key_slot

from bench.jobs import Noop
from bench.pickup import Target
from conveyor_core import keys
from conveyor_core.catalog import Catalog, JobType, Queue, RetryPolicy
from conveyor_core.context import JobContext
from conveyor_core.enqueue import enqueue
from conveyor_core.local.redis_server import RedisServerProcess
from conveyor_core.redis import connect
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_worker.worker import ConveyorWorker
from tests.support.cluster import ClusterNodeProcess, LocalCluster, free_cluster_port

SHARDS = 3
THROUGHPUT_JOBS = 3000
ROUNDS = 3
PICKUP_SAMPLES = 150
BACKLOG_JOBS = 20_000
# Each node's CPU with no job is measured over this long before a cost round.
IDLE_BASELINE_S = 2.0
# The paced pair's submit rate: below what every setup drains on a small
# machine, so both do the same work per second.
PACE_JOBS_PER_S = 1000.0
JOB_TYPE = "cluster_noop"

# Set by the handler: when each job started (perf_counter), by id.
STARTED: dict[str, float] = {}
_waiting: dict[str, asyncio.Future[float]] = {}


async def noop(ctx: JobContext, payload: Noop) -> None:
    """The bench's job: notes its start in this process; no Redis command of its own."""
    at = time.perf_counter()
    STARTED[ctx.job_id] = at
    if (future := _waiting.pop(ctx.job_id, None)) is not None and not future.done():
        future.set_result(at)


@dataclass
class Setup:
    """One contender: where its Redis is, and how many shards its queue has."""

    name: str
    url: str
    primaries: list[redis_sync.Redis]
    replicas: list[redis_sync.Redis]
    queue: str
    shards: int
    # Submits per second at most (None: as fast as they go): a node's cost per
    # job depends on its load (see report).
    pace_jobs_per_s: float | None = None
    # Per round, per job: Redis CPU (ms) summed over the primaries, and over
    # the replicas (all nodes: the two summed); commands over the primaries;
    # jobs/s (this process drains).
    cpu_ms: list[float] = field(default_factory=list)
    replica_cpu_ms: list[float] = field(default_factory=list)
    # Time spent in commands (commandstats usec), per job, over the primaries.
    command_ms: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    jobs_per_s: list[float] = field(default_factory=list)
    # Per primary (its port), over every round: its part of the primaries' CPU.
    cpu_by_node_s: dict[int, float] = field(default_factory=dict)
    jobs_by_shard: Counter[str] = field(default_factory=Counter)
    pickups_ms: list[float] = field(default_factory=list)
    memory_per_job_b: float = 0.0
    # used_memory per finished job, kept for its retention (a day by default).
    memory_per_finished_b: list[float] = field(default_factory=list)

    @property
    def all_nodes_ms(self) -> list[float]:
        """Per round, per job: Redis CPU summed over every node, replicas too."""
        return [p + r for p, r in zip(self.cpu_ms, self.replica_cpu_ms, strict=True)]

    @property
    def catalog(self) -> Catalog:
        job_type = JobType(
            JOB_TYPE,
            Noop,
            "bench.cluster:noop",
            queue=self.queue,
            retry=RetryPolicy(max_tries=1),
        )
        return Catalog([job_type], queues=[Queue(self.queue, shards=self.shards)])


def info(node: redis_sync.Redis, section: str) -> dict[str, Any]:
    found: dict[str, Any] = node.info(section)  # type: ignore[assignment]
    return found


def cpu_s(node: redis_sync.Redis) -> float:
    cpu = info(node, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def calls(node: redis_sync.Redis) -> tuple[int, int]:
    """Commands run so far, and microseconds spent in them (a script's own
    commands count in both, and in the script's time: alike for every setup)."""
    stats = info(node, "commandstats").values()
    return sum(int(v["calls"]) for v in stats), sum(int(v["usec"]) for v in stats)


def used_memory(nodes: list[redis_sync.Redis]) -> int:
    return sum(int(info(n, "memory")["used_memory"]) for n in nodes)


def port_of(node: redis_sync.Redis) -> int:
    return int(node.connection_pool.connection_kwargs["port"])


def spread_queue(cluster: LocalCluster) -> str:
    """A queue name whose SHARDS shards land on SHARDS different primaries."""
    owners = cluster.nodes[0].slot_owners()

    def owner(key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for port, ranges in owners.items() if any(slot in r for r in ranges))

    for n in range(10_000):
        name = f"bench:sharded-{n}"
        if len({owner(shard) for shard in keys.shard_names(name, SHARDS)}) == SHARDS:
            return name
    raise RuntimeError("no queue name spreads over every primary")


@asynccontextmanager
async def worker_on(setup: Setup) -> AsyncIterator[tuple[ConveyorWorker, JobStore]]:
    """Conveyor's worker on the setup's queue, in this process, running."""
    redis = connect(RedisSettings(url=setup.url))
    store = JobStore(redis, setup.catalog)  # type: ignore[arg-type]
    worker = ConveyorWorker(
        redis_pool=redis,  # type: ignore[arg-type]
        store=store,
        queue_name=setup.queue,
        handlers={JOB_TYPE: noop},
        instrument=False,
        handle_signals=False,
    )
    running = asyncio.create_task(worker.main())
    try:
        while len(worker.wakeups) < setup.shards:  # noqa: ASYNC110  # a local list
            await asyncio.sleep(0.01)
        for wakeup in worker.wakeups:
            await asyncio.wait_for(wakeup.subscribed.wait(), 10)
        yield worker, store
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, 30)
        await worker.close()


def flush(setup: Setup) -> None:
    for node in setup.primaries:
        node.flushall()


async def cost_round(setup: Setup) -> None:
    flush(setup)
    STARTED.clear()
    async with worker_on(setup) as (worker, store):
        job_type = store.catalog[JOB_TYPE]
        await asyncio.sleep(0.5)  # start-up traffic passes
        nodes = setup.primaries + setup.replicas
        idle_before = [cpu_s(n) for n in nodes]
        await asyncio.sleep(IDLE_BASELINE_S)
        idle_rate = [
            (cpu_s(n) - b) / IDLE_BASELINE_S for n, b in zip(nodes, idle_before, strict=True)
        ]
        cpu_before = [cpu_s(n) for n in nodes]
        calls_before = [calls(n) for n in setup.primaries]
        memory_before = used_memory(setup.primaries)
        started_s = time.perf_counter()
        submitted: list[str] = []
        for start in range(0, THROUGHPUT_JOBS, 100):
            batch = range(start, min(start + 100, THROUGHPUT_JOBS))
            done = await asyncio.gather(*(enqueue(store, job_type, Noop()) for _ in batch))
            submitted += [s.job_id for s in done]
            if setup.pace_jobs_per_s is not None:
                due_s = started_s + len(submitted) / setup.pace_jobs_per_s
                await asyncio.sleep(max(0.0, due_s - time.perf_counter()))
        async with asyncio.timeout(120):
            # This process's own jobs and worker: no Redis call to wait for.
            while len(STARTED) < THROUGHPUT_JOBS or worker.running:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        elapsed_s = time.perf_counter() - started_s
        used = [
            cpu_s(n) - b - rate * elapsed_s
            for n, b, rate in zip(nodes, cpu_before, idle_rate, strict=True)
        ]
        primaries_used = used[: len(setup.primaries)]
        finished_b = used_memory(setup.primaries) - memory_before
        calls_after = [calls(n) for n in setup.primaries]
        commands = sum(a[0] - b[0] for a, b in zip(calls_after, calls_before, strict=True))
        command_us = sum(a[1] - b[1] for a, b in zip(calls_after, calls_before, strict=True))
    per_job_ms = 1000 / THROUGHPUT_JOBS
    setup.cpu_ms.append(sum(primaries_used) * per_job_ms)
    setup.replica_cpu_ms.append(sum(used[len(setup.primaries) :]) * per_job_ms)
    setup.commands.append(commands / THROUGHPUT_JOBS)
    setup.command_ms.append(command_us / 1000 / THROUGHPUT_JOBS)
    setup.jobs_per_s.append(THROUGHPUT_JOBS / elapsed_s)
    setup.memory_per_finished_b.append(finished_b / THROUGHPUT_JOBS)
    for node, seconds in zip(setup.primaries, primaries_used, strict=True):
        by_node = setup.cpu_by_node_s
        by_node[port_of(node)] = by_node.get(port_of(node), 0.0) + max(seconds, 0.0)
    setup.jobs_by_shard.update(keys.queue_of(job_id) or "" for job_id in submitted)


async def pickup_round(setup: Setup, samples: int) -> None:
    flush(setup)
    async with worker_on(setup) as (_, store):
        job_type = store.catalog[JOB_TYPE]
        loop = asyncio.get_running_loop()
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0.005, 0.05))  # noqa: S311
            submitted = await enqueue(store, job_type, Noop())
            enqueued = time.perf_counter()
            future = _waiting[submitted.job_id] = loop.create_future()
            if (at := STARTED.get(submitted.job_id)) is not None:  # started before we looked
                future.set_result(at)
            started = await asyncio.wait_for(future, 10)
            setup.pickups_ms.append(max(started - enqueued, 0.0) * 1000)


async def memory_round(setup: Setup) -> None:
    """used_memory per waiting job, summed over the primaries (deferred: none runs)."""
    flush(setup)
    redis = connect(RedisSettings(url=setup.url))
    store = JobStore(redis, setup.catalog)  # type: ignore[arg-type]
    job_type = store.catalog[JOB_TYPE]
    try:
        before = used_memory(setup.primaries)
        for start in range(0, BACKLOG_JOBS, 500):
            batch = range(start, min(start + 500, BACKLOG_JOBS))
            await asyncio.gather(
                *(enqueue(store, job_type, Noop(), defer_by_s=3600) for _ in batch)
            )
        after = used_memory(setup.primaries)
    finally:
        await redis.aclose()
    setup.memory_per_job_b = (after - before) / BACKLOG_JOBS


@contextmanager
def lone_cluster_node(binary: str) -> Iterator[ClusterNodeProcess]:
    """A cluster of one primary serving every slot: cluster mode in one process."""
    port = free_cluster_port()
    node = ClusterNodeProcess(binary, port, Path(tempfile.mkdtemp(prefix="conveyor-bench-")))
    node.start()
    try:
        with node.client() as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 30
        while node.cluster_info().get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise TimeoutError("a one-node cluster did not become ok")
            time.sleep(0.1)
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.dir, ignore_errors=True)


@contextmanager
def contenders(binary: str | None = None) -> Iterator[list[Setup]]:
    """One node with the queue in one shard (today's layout) and in three
    (what shards cost apart from a cluster); one process in cluster mode
    with three (what cluster mode costs); and the cluster with three. Every
    node runs `binary` (`redis-server` on PATH by default)."""
    binary = binary or shutil.which("redis-server") or "redis-server"
    node = RedisServerProcess(binary)
    node.start()
    # One node with a replica: what the cluster's replicas cost, on one node.
    held, holder = RedisServerProcess(binary), RedisServerProcess(binary)
    held.start()
    holder.start()
    cluster = LocalCluster(binary=binary)
    bare = LocalCluster(binary=binary, replicas_per_primary=0)
    try:
        cluster.start()
        bare.start()
        queue = spread_queue(cluster)
        if spread_queue(bare) != queue:
            raise RuntimeError("the two clusters' slot maps differ")
        one = [redis_sync.Redis(port=node.port)]
        replicated = redis_sync.Redis(port=held.port)
        replica = redis_sync.Redis(port=holder.port)
        follow(replica, held.port)
        with lone_cluster_node(binary) as lone:
            yield [
                Setup("one node, 1 shard", node.url, one, [], queue, 1),
                Setup("one node, 1 shard, paced", node.url, one, [], queue, 1, PACE_JOBS_PER_S),
                Setup(f"one node, {SHARDS} shards", node.url, one, [], queue, SHARDS),
                Setup("one node + replica, 1 shard", held.url, [replicated], [replica], queue, 1),
                Setup(
                    f"cluster of 1, {SHARDS} shards",
                    f"redis+cluster://127.0.0.1:{lone.port}",
                    [lone.client(socket_timeout=10)],
                    [],
                    queue,
                    SHARDS,
                ),
                Setup(
                    f"cluster 3+0, {SHARDS} shards",
                    bare.seed_url,
                    [n.client(socket_timeout=10) for n in bare.primaries()],
                    [],
                    queue,
                    SHARDS,
                ),
                Setup(
                    f"cluster 3+0, {SHARDS} shards, paced",
                    bare.seed_url,
                    [n.client(socket_timeout=10) for n in bare.primaries()],
                    [],
                    queue,
                    SHARDS,
                    pace_jobs_per_s=PACE_JOBS_PER_S,
                ),
                Setup(
                    f"cluster 3+3, {SHARDS} shards",
                    cluster.seed_url,
                    [n.client(socket_timeout=10) for n in cluster.primaries()],
                    [n.client(socket_timeout=10) for n in cluster.replicas()],
                    queue,
                    SHARDS,
                ),
            ]
    finally:
        bare.stop()
        cluster.stop()
        node.stop()
        holder.stop()
        held.stop()


def follow(replica: redis_sync.Redis, primary_port: int) -> None:
    """Make `replica` a replica of the node on `primary_port`, synced."""
    replica.replicaof("127.0.0.1", primary_port)
    deadline = time.monotonic() + 30
    while info(replica, "replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError("the one node's replica did not sync")
        time.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def report(
    setups: list[Setup],
    one: Setup,
    bare: Setup,
    many: Setup,
    paced: tuple[Setup, Setup],
    held: Setup,
) -> list[str]:
    med = statistics.median
    lines = [
        f"queue {many.queue!r}: its {SHARDS} shards on {SHARDS} primaries;"
        f" {THROUGHPUT_JOBS} jobs a round, {ROUNDS} rounds (medians)"
    ]
    lines.append(
        f"  {'Redis per job':<28} {'CPU, primaries':>14} {'in commands':>12} {'replicas':>10}"
        f" {'all nodes':>10} {'cmds/job':>9} {'jobs/s':>7}"
    )
    for s in setups:
        lines.append(
            f"  {s.name:<28} {med(s.cpu_ms):>11.3f} ms {med(s.command_ms):>9.3f} ms"
            f" {med(s.replica_cpu_ms):>7.3f} ms {med(s.all_nodes_ms):>7.3f} ms"
            f" {med(s.commands):>9.1f} {med(s.jobs_per_s):>7.0f}"
        )
    lines.append(
        f"  {'':<28} {'pickup p50':>11} {'p95':>9} {'memory per queued job':>22}"
        f" {'per finished job':>17}"
    )
    for s in setups:
        if s.pickups_ms:
            lines.append(
                f"  {s.name:<28} {percentile(s.pickups_ms, 0.5):>8.2f} ms"
                f" {percentile(s.pickups_ms, 0.95):>6.2f} ms {s.memory_per_job_b:>20.0f} B"
                f" {med(s.memory_per_finished_b):>15.0f} B"
            )
    total_jobs = sum(many.jobs_by_shard.values())
    shares = ", ".join(
        f"{shard} {100 * n / total_jobs:.1f} %" for shard, n in sorted(many.jobs_by_shard.items())
    )
    lines.append(f"  jobs per shard: {shares}")
    cpu_total = sum(many.cpu_by_node_s.values()) or 1.0
    by_node = ", ".join(
        f"{100 * s / cpu_total:.0f} %" for _, s in sorted(many.cpu_by_node_s.items())
    )
    lines.append(f"  each primary's share of the cluster's Redis CPU: {by_node}")
    lines.append(
        f"  {many.name}: all nodes {med(many.all_nodes_ms) / med(one.all_nodes_ms):.2f}x"
        f" one node's, primaries alone {med(many.cpu_ms) / med(one.cpu_ms):.2f}x;"
        f" time in the same commands {med(many.command_ms) / med(bare.command_ms):.2f}x"
        f" {bare.name}'s (the replicas' processes sharing the cores)"
    )
    lines.append(
        f"  {many.name}: all nodes {med(many.all_nodes_ms) / med(held.all_nodes_ms):.2f}x"
        f" {held.name}'s (each write kept on two nodes in both)"
    )
    paced_one, paced_bare = paced
    lines.append(
        f"  at {PACE_JOBS_PER_S:.0f} jobs/s: {paced_bare.name} all nodes"
        f" {med(paced_bare.all_nodes_ms) / med(paced_one.all_nodes_ms):.2f}x {paced_one.name}'s"
    )
    lines.append(
        "  CPU: INFO cpu, each node less its idle rate; in commands: commandstats usec of"
        " the primaries (a script's own commands counted in it too);"
    )
    lines.append("  replicas: the replicas' CPU (one node has none); all nodes: both.")
    return lines


def targets(one: Setup, bare: Setup, many: Setup) -> list[Target]:
    med = statistics.median
    busiest = max(many.jobs_by_shard.values()) / sum(many.jobs_by_shard.values())
    return [
        # The figure: the test cluster (3 primaries, 3 replicas), every
        # node summed. The 3+0 line of the report shows what replicas add.
        Target(
            "Redis CPU per job, all nodes summed, cluster 3+3 / one node",
            med(many.all_nodes_ms) / med(one.all_nodes_ms),
            1.15,
            at_least=False,
        ),
        Target("busiest shard's share of the jobs", 100 * busiest, 40, at_least=False, unit=" %"),
        Target(
            "idle pickup p50 on the cluster",
            percentile(many.pickups_ms, 0.5),
            5,
            at_least=False,
            unit=" ms",
        ),
    ]


async def run(setups: list[Setup], timed: list[Setup]) -> None:
    for round_ in range(ROUNDS):
        for setup in setups if round_ % 2 == 0 else reversed(setups):
            print(f"cost round {round_ + 1}: {setup.name} ...", flush=True)
            await cost_round(setup)
    for setup in timed:
        print(f"pickup: {setup.name} ...", flush=True)
        await pickup_round(setup, PICKUP_SAMPLES)
        print(f"memory: {setup.name} ...", flush=True)
        await memory_round(setup)


def main() -> int:
    with contenders() as setups:
        one, paced_one = setups[:2]
        held = next(s for s in setups if s.replicas and s.shards == 1)
        bare, paced_bare, many = setups[-3:]
        uvloop.run(run(setups, [one, many]))
    found = targets(one, bare, many)
    print("\n".join(report(setups, one, bare, many, (paced_one, paced_bare), held)))
    print()
    missed = [t.name for t in found if not t.met]
    print("targets (one queue over 3 shards on the cluster, against one node):")
    print("\n".join(t.line() for t in found))
    print(
        f"{len(found) - len(missed)} of {len(found)} met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
