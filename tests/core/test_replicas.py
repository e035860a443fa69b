"""A write that waits for replicas (WAIT), on a real cluster and on a single Redis,
and the submits it found short, counted (conveyor_redis_wait_short_total)."""

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis as redis_sync
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from conveyor_core.cluster import ClusterClient
from conveyor_core.enqueue import enqueue
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisClient, connect
from conveyor_core.replicas import ReplicasShortError, call_and_wait
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support.cluster import LocalCluster

WRITE = "return redis.call('incr', KEYS[1])"
KEY = "conveyor:{b}:counter"
APPEND = "return redis.call('rpush', KEYS[1], ARGV[1])"
LOG = "conveyor:{b}:log"
# A WAIT expected to come back short waits this long;
TIMEOUT_MS = 200
# one expected to be met, up to this long (it returns once met: a loaded
# machine may take a while to carry the replica's ACK).
ACK_TIMEOUT_MS = 3000
# A WAIT cut short by a failover waits this long at most (any failover ends first).
DEMOTION_WAIT_MS = 8000


@pytest.fixture
async def patient_redis(cluster_url: str) -> AsyncIterator[ClusterClient]:
    """A cluster client whose socket timeout outlasts every WAIT here."""
    client = connect(RedisSettings(url=cluster_url, socket_timeout_s=DEMOTION_WAIT_MS / 1000 + 5))
    assert isinstance(client, ClusterClient)
    yield client
    await client.aclose()


async def test_a_write_returns_once_its_replica_holds_it(
    patient_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    script = patient_redis.register_script(WRITE)
    for node in redis_cluster.primaries():  # NOSCRIPT first: it loads itself and runs once
        with node.client() as direct:
            direct.script_flush()
    done = await call_and_wait(
        patient_redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=ACK_TIMEOUT_MS
    )
    assert (done.reply, done.wanted, done.acknowledged, done.short) == (1, 1, 1, False)
    # The replica of the key's primary has it already: no wait for replication here.
    replica = redis_cluster.replica_of(redis_cluster.primary_of(KEY))
    with redis_sync.Redis(port=replica.port, single_connection_client=True) as direct:
        direct.execute_command("READONLY")
        assert direct.get(KEY) == b"1"


async def test_with_its_replica_down_a_write_says_it_is_short(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    script = cluster_redis.register_script(WRITE)
    redis_cluster.replica_of(redis_cluster.primary_of(KEY)).stop()
    done = await call_and_wait(
        cluster_redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=TIMEOUT_MS
    )
    # The primary took it (the write is not undone), but no replica holds it.
    assert (done.reply, done.acknowledged, done.short) == (1, 0, True)
    assert await cluster_redis.get(KEY) == b"1"


async def test_without_replicas_wanted_nothing_waits(any_redis: RedisClient) -> None:
    script = any_redis.register_script(WRITE)
    done = await call_and_wait(any_redis, script, keys=[KEY], args=[], replicas=0, timeout_ms=1)
    assert (done.reply, done.wanted, done.short) == (1, 0, False)


async def test_a_single_redis_has_no_replica_to_wait_for(redis: ArqRedis) -> None:
    script = redis.register_script(WRITE)
    await redis.script_flush()
    done = await call_and_wait(redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=50)
    assert (done.reply, done.acknowledged, done.short) == (1, 0, True)
    done = await call_and_wait(redis, script, keys=[KEY], args=[], replicas=0, timeout_ms=50)
    assert (done.reply, done.short) == (2, False)


async def _write_through_a_failover(
    client: ClusterClient, cluster: LocalCluster, replicas: int, *, cut_off_first: bool = False
) -> tuple[set[int], set[int]]:
    """Writers append numbers to one list while its primary is SIGKILLed:
    (the numbers each write's answer vouched for, the numbers the promoted primary has)."""
    script = client.register_script(APPEND)
    vouched: set[int] = set()
    numbers = iter(range(1_000_000))
    killed = asyncio.Event()

    async def writer() -> None:
        # Until some writes after the failover have been answered.
        after = 0
        while after < 20:
            number = next(numbers)
            try:
                done = await call_and_wait(
                    client,
                    script,
                    keys=[LOG],
                    args=[number],
                    replicas=replicas,
                    timeout_ms=TIMEOUT_MS,
                )
            except REDIS_FAULT_ERRORS:
                await asyncio.sleep(0.05)
                continue
            if not done.short:
                vouched.add(number)
            after += killed.is_set()

    async def killer() -> None:
        while len(vouched) < 200:
            await asyncio.sleep(0.01)
        primary = cluster.primary_of(LOG)
        await asyncio.to_thread(cluster.kill_primary, primary, cut_off_first=cut_off_first)
        killed.set()

    await asyncio.gather(killer(), *(writer() for _ in range(4)))
    kept = {int(raw) for raw in await client.lrange(LOG, 0, -1)}  # type: ignore[misc]
    return vouched, kept


@pytest.mark.parametrize("cut_off_first", [False, True], ids=["in-step", "replica-cut-off"])
async def test_every_write_a_replica_acknowledged_survives_a_failover(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster, cut_off_first: bool
) -> None:
    vouched, kept = await _write_through_a_failover(
        cluster_redis, redis_cluster, replicas=1, cut_off_first=cut_off_first
    )
    assert len(vouched) > 200
    assert vouched <= kept, f"lost {sorted(vouched - kept)[:20]}"


async def test_without_a_wait_acknowledged_writes_can_be_lost(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    # What REDIS_WAIT_REPLICAS is for: the primary said yes, then died first.
    vouched, kept = await _write_through_a_failover(
        cluster_redis, redis_cluster, replicas=0, cut_off_first=True
    )
    assert vouched - kept


def _short_submits(queue: str) -> float:
    return REGISTRY.get_sample_value("conveyor_redis_wait_short_total", {"queue": queue}) or 0.0


async def test_a_submit_no_replica_acknowledged_is_counted(
    patient_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    redis = cast(ArqRedis, patient_redis)
    patient = JobStore(redis, wait_replicas=1, wait_timeout_ms=ACK_TIMEOUT_MS)
    queue = CREATE_TASK.queue
    before = _short_submits(queue)
    assert (await enqueue(patient, CREATE_TASK, CreateTask(sleep_s=0))).created
    assert _short_submits(queue) == before  # its replica acknowledged it

    redis_cluster.replica_of(redis_cluster.primary_of(queue)).stop()
    store = JobStore(redis, wait_replicas=1, wait_timeout_ms=TIMEOUT_MS)
    with pytest.raises(ReplicasShortError) as short:
        await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0))
    assert (short.value.wanted, short.value.acknowledged) == (1, 0)
    assert _short_submits(queue) == before + 1


async def test_a_submit_on_a_single_redis_waiting_for_a_replica_is_counted(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis, wait_replicas=1, wait_timeout_ms=50)
    queue = CREATE_TASK.queue
    before = _short_submits(queue)
    with pytest.raises(ReplicasShortError):
        await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0))
    assert _short_submits(queue) == before + 1


async def test_a_primary_demoted_while_its_write_waits_says_it_is_short(
    patient_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    """A failover while the WAIT blocks: the demoted primary ends the WAIT with
    UNBLOCKED. The write stands but no replica vouched for it: short, not a bug."""
    client = patient_redis
    script = client.register_script(WRITE)
    primary = redis_cluster.primary_of(KEY)
    replica = redis_cluster.replica_of(primary)
    await call_and_wait(client, script, keys=[KEY], args=[], replicas=0, timeout_ms=1)  # loaded
    # Two replicas wanted, one exists: the WAIT blocks its whole timeout.
    waiting = asyncio.create_task(
        call_and_wait(client, script, keys=[KEY], args=[], replicas=2, timeout_ms=DEMOTION_WAIT_MS)
    )
    await asyncio.sleep(0.3)
    with replica.client() as direct:
        direct.execute_command("CLUSTER", "FAILOVER")  # graceful: the primary turns replica
    try:
        done = await asyncio.wait_for(waiting, timeout=DEMOTION_WAIT_MS / 1000 + 2)
        # Not the WAIT's own timeout, which would count the one replica (1).
        assert (done.reply, done.wanted, done.acknowledged, done.short) == (2, 2, 0, True)
    finally:
        redis_cluster.wait_for_promotion(replica, primary)
        redis_cluster.wait_until_ok()  # the old primary synced as the new one's replica
