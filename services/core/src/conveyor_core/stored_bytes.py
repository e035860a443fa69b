"""Quotas on stored bytes per api key: documents and offloaded payloads.

Each key's bytes are counted in buckets by when they go (a week each, in the
key's own hash slot): a write adds its size to the bucket of the week its
record expires, and the bucket expires at that week's end, so what a key
stores is the sum of its live buckets, with no decrement to miss: bounded
and self-healing. A blob deleted early (a document deleted, a bulk delete)
still counts until its bucket expires: the count errs on the safe side.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from arq.connections import ArqRedis

from conveyor_core.keys import PREFIX
from conveyor_core.metrics import STORED_BYTES, STORED_BYTES_LIMIT
from conveyor_core.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

BUCKET_S = 7 * 86_400
# How often the api reads again what each key with a quota stores: its gauge
# then falls as bytes expire, not only at the key's next write.
GAUGE_REFRESH_S = 60.0
# A year and a bit: the longest a job may be deferred, plus its retention.
HORIZON_BUCKETS = 54


@dataclass(frozen=True, slots=True)
class ByteQuota:
    """An api key's cap on the bytes it keeps in the blob store."""

    api_key: str
    max_bytes: int


class ByteQuotaError(Exception):
    """A write the key's byte quota refuses; nothing was stored."""

    def __init__(self, quota: ByteQuota, used_bytes: int, size_bytes: int, retry_after_s: int):
        self.quota = quota
        self.used_bytes = used_bytes
        self.size_bytes = size_bytes
        # 0: waiting never helps (one thing over the whole quota).
        self.retry_after_s = retry_after_s
        if self.too_large:
            message = f"{size_bytes} bytes, over the whole quota of {quota.max_bytes}"
        else:
            message = (
                f"{size_bytes} more bytes would bring {used_bytes} stored over the "
                f"quota of {quota.max_bytes}"
            )
        super().__init__(message)

    @property
    def too_large(self) -> bool:
        return self.size_bytes > self.quota.max_bytes


# Add to a bucket and set when it expires, in one step.
COUNT = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
"""


def bucket_key(api_key: str, index: int) -> str:
    return f"{PREFIX}stored-bytes:{{{api_key}}}:{index}"


def _index(at_s: float) -> int:
    return math.floor(at_s / BUCKET_S)


async def usage(redis: ArqRedis, api_key: str, at_s: float | None = None) -> tuple[int, int]:
    """Bytes the key stores now, and the seconds until some of them are no
    longer counted (its earliest live bucket expires; 0 when it stores none)."""
    first = _index(time.time() if at_s is None else at_s)
    indexes = range(first, first + HORIZON_BUCKETS + 1)
    values = await redis.mget([bucket_key(api_key, i) for i in indexes])
    used, retry_after_s = 0, 0
    now_s = time.time() if at_s is None else at_s
    for index, raw in zip(indexes, values, strict=True):
        size = int(raw) if raw else 0
        if size > 0 and used == 0:
            retry_after_s = max(1, math.ceil((index + 1) * BUCKET_S - now_s))
        used += size
    STORED_BYTES.labels(api_key).set(used)
    return used, retry_after_s


async def check(redis: ArqRedis, quota: ByteQuota, size_bytes: int) -> None:
    """Raise ByteQuotaError unless the key may store `size_bytes` more."""
    STORED_BYTES_LIMIT.labels(quota.api_key).set(quota.max_bytes)
    if size_bytes > quota.max_bytes:
        raise ByteQuotaError(quota, 0, size_bytes, 0)
    used, retry_after_s = await usage(redis, quota.api_key)
    if used + size_bytes > quota.max_bytes:
        raise ByteQuotaError(quota, used, size_bytes, retry_after_s)


async def count(redis: ArqRedis, api_key: str, size_bytes: int, until_s: float) -> None:
    """Count `size_bytes` the key stores until `until_s` (when its record goes)."""
    now_s = time.time()
    index = min(_index(max(until_s, now_s)), _index(now_s) + HORIZON_BUCKETS)
    # One script, not MULTI (a cluster takes none): never a count without its expiry.
    expires_at_s = (index + 1) * BUCKET_S
    await redis.eval(COUNT, 1, bucket_key(api_key, index), str(size_bytes), str(expires_at_s))  # type: ignore[misc]


class QuotaGauges:
    """Keeps `conveyor_stored_bytes` and `conveyor_stored_bytes_limit` current for
    every key with a quota: read from Redis at start and every `interval_s`, so a
    key that stopped writing still shows its bytes expiring (the alert near a
    quota ends), a key's quota shows before its first write, and a key no longer
    configured leaves no series behind."""

    def __init__(
        self,
        redis: ArqRedis,
        quotas: Callable[[], Iterable[ByteQuota]],
        interval_s: float = GAUGE_REFRESH_S,
    ) -> None:
        self._redis = redis
        self._quotas = quotas  # read afresh each round: the keys file may change
        self._interval_s = interval_s
        self._exported: set[str] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        quotas = list(self._quotas())
        for quota in quotas:
            STORED_BYTES_LIMIT.labels(quota.api_key).set(quota.max_bytes)
            await usage(self._redis, quota.api_key)
        names = {quota.api_key for quota in quotas}
        for gone in self._exported - names:
            for gauge in (STORED_BYTES, STORED_BYTES_LIMIT):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._exported = names

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="quota-gauges")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping.set()  # ends the loop even if the cancel is lost in a reply
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # Redis' fault: the gauges wait for the next round
                logger.debug("stored bytes not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stopping.wait()
