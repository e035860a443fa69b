"""Quotas on stored bytes against a real Redis: weekly buckets that sum up,
expire by themselves, and say when some bytes stop counting."""

import asyncio
import time
from collections.abc import Callable

import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from conveyor_core import stored_bytes
from conveyor_core.stored_bytes import BUCKET_S, ByteQuota, ByteQuotaError, QuotaGauges

DAY_S = 86_400


async def test_bytes_count_until_their_records_go(redis: ArqRedis) -> None:
    now_s = time.time()
    await stored_bytes.count(redis, "team", 100, now_s + DAY_S)
    await stored_bytes.count(redis, "team", 200, now_s + 30 * DAY_S)
    await stored_bytes.count(redis, "other", 5, now_s + DAY_S)
    used, retry_after_s = await stored_bytes.usage(redis, "team")
    assert used == 300
    assert 0 < retry_after_s <= 2 * BUCKET_S  # when the first bucket expires

    # Every bucket expires by itself: nothing to decrement, nothing left behind.
    bucket_keys = await redis.keys("conveyor:stored-bytes:{team}:*")
    assert len(bucket_keys) == 2
    for key in bucket_keys:
        assert 0 < await redis.ttl(key) <= 31 * DAY_S + BUCKET_S

    # A week after the first bucket's end, only the later bytes count.
    later_s = now_s + 2 * BUCKET_S
    assert (await stored_bytes.usage(redis, "team", at_s=later_s))[0] == 200


async def test_bytes_kept_past_the_horizon_still_count(redis: ArqRedis) -> None:
    await stored_bytes.count(redis, "team", 7, time.time() + 10 * 366 * DAY_S)
    assert (await stored_bytes.usage(redis, "team"))[0] == 7


async def test_the_quota_refuses_what_does_not_fit(redis: ArqRedis) -> None:
    quota = ByteQuota("team", 1000)
    await stored_bytes.check(redis, quota, 1000)  # the whole quota fits, once
    await stored_bytes.count(redis, "team", 600, time.time() + DAY_S)
    with pytest.raises(ByteQuotaError) as over:
        await stored_bytes.check(redis, quota, 500)
    assert not over.value.too_large
    assert over.value.used_bytes == 600
    assert over.value.retry_after_s > 0
    with pytest.raises(ByteQuotaError) as too_large:
        await stored_bytes.check(redis, quota, 1001)
    assert too_large.value.too_large
    await stored_bytes.check(redis, quota, 400)


def gauge(name: str, api_key: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"api_key": api_key})


async def eventually(check: Callable[[], bool], bound_s: float = 10.0) -> None:
    """Wait (a fault bound, not a speed target) until `check()` holds."""
    deadline = time.monotonic() + bound_s
    while not check():
        assert time.monotonic() < deadline, "the gauges never caught up"
        await asyncio.sleep(0.02)


async def test_the_gauges_follow_expiry_and_the_configured_keys(redis: ArqRedis) -> None:
    """Without a write: a key's quota shows at once, its count falls as its
    buckets go, and a key no longer configured leaves no series."""
    quotas = [ByteQuota("gauged", 1000), ByteQuota("gauged-too", 50)]
    await stored_bytes.count(redis, "gauged", 900, time.time() + DAY_S)
    gauges = QuotaGauges(redis, lambda: list(quotas), interval_s=0.05)
    gauges.start()
    try:
        await eventually(lambda: gauge("conveyor_stored_bytes", "gauged") == 900)
        assert gauge("conveyor_stored_bytes_limit", "gauged") == 1000
        assert gauge("conveyor_stored_bytes_limit", "gauged-too") == 50
        assert gauge("conveyor_stored_bytes", "gauged-too") == 0

        for key in await redis.keys("conveyor:stored-bytes:{gauged}:*"):
            await redis.delete(key)  # as when its bucket expires
        await eventually(lambda: gauge("conveyor_stored_bytes", "gauged") == 0)

        quotas.pop()  # the key is gone from the keys file
        await eventually(lambda: gauge("conveyor_stored_bytes_limit", "gauged-too") is None)
        assert gauge("conveyor_stored_bytes", "gauged-too") is None
        assert gauge("conveyor_stored_bytes_limit", "gauged") == 1000
    finally:
        await gauges.stop()
