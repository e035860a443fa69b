"""Quotas on stored bytes against a real Redis: weekly buckets that sum up,
expire by themselves, and say when some bytes stop counting."""

import time

import pytest
from arq.connections import ArqRedis

from conveyor_core import stored_bytes
from conveyor_core.stored_bytes import BUCKET_S, ByteQuota, ByteQuotaError

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
