"""A queue's per-minute history, read from a real Redis: what a reader keeps."""

import pytest
from arq.connections import ArqRedis

from conveyor_core.history import (
    FINAL_AFTER_MS,
    MAX_MINUTES,
    MINUTE_MS,
    HistoryReader,
    history_key,
    read_history,
)
from conveyor_core.jobs import now_ms

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    """Each test on one node, then on a cluster."""
    return node_or_cluster_redis


QUEUE = "q"


async def minute_reads(redis: ArqRedis) -> int:
    """HGETALLs Redis has run: a history read is one per minute it asks for."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


# One node only: it counts the commands a read sends with one node's INFO.
@pytest.mark.parametrize("node_or_cluster_redis", ["node"], indirect=True)
async def test_a_reader_asks_redis_for_each_final_minute_once(redis: ArqRedis) -> None:
    minute = now_ms() // MINUTE_MS
    await redis.hset(history_key(QUEUE, minute - 30), mapping={"t:complete": 3, "t:wait_ms": 90})  # type: ignore[misc]
    await redis.hset(history_key(QUEUE, minute), mapping={"t:enqueued": 1})  # type: ignore[misc]
    reader = HistoryReader(redis)

    before = await minute_reads(redis)
    first = await reader.read(QUEUE, 60)
    assert await minute_reads(redis) - before == 60
    assert [m.minute for m in first] == list(range(minute - 59, minute + 1))
    assert first[-31].counts == {"t": {"complete": 3, "started": 3}}
    assert first[-31].mean_wait_ms() == 30
    assert [(m.counts, m.wait_ms) for m in first] == [
        (m.counts, m.wait_ms) for m in await read_history(redis, QUEUE, 60)
    ]

    await redis.hincrby(history_key(QUEUE, minute), "t:enqueued", 1)  # type: ignore[misc]
    before = await minute_reads(redis)
    second = await reader.read(QUEUE, 60)
    recent = FINAL_AFTER_MS // MINUTE_MS + 2  # the minutes that may still change, and a tick
    assert await minute_reads(redis) - before <= recent
    assert second[-1].counts["t"]["enqueued"] == 2  # the current minute is read afresh
    assert second[-31].counts == first[-31].counts
    assert 60 - recent <= reader.kept(QUEUE) <= 60


async def test_a_reader_keeps_no_more_than_the_longest_span(redis: ArqRedis) -> None:
    reader = HistoryReader(redis)
    old = now_ms() - 2 * MAX_MINUTES * MINUTE_MS
    await reader.read(QUEUE, MAX_MINUTES, until_ms=old)  # a span long gone
    await reader.read(QUEUE, MAX_MINUTES)
    assert reader.kept(QUEUE) <= MAX_MINUTES
