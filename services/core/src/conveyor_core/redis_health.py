"""Redis' memory policy and usage, read at start and every so often by both services.

Conveyor keeps acknowledged jobs in Redis, so Redis must never evict: with any
`maxmemory-policy` but `noeviction` a full Redis silently drops jobs the api
answered 201 for. The check says so loudly (a warning in the log, the
`conveyor_redis_maxmemory_policy_info` metric and its alert, the status page)
and, unless `REDIS_ALLOW_EVICTION` is set, keeps the service unready. It also
exports used and maximum memory, so an alert fires before a `noeviction`
Redis is full and starts refusing writes.

On a Redis Cluster it reads every primary: one that may evict makes the
cluster evict, and the fullest one is the cluster's reading (its shard
refuses writes first).
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from conveyor_core.cluster import ClusterClient
from conveyor_core.metrics import REDIS_MAXMEMORY_POLICY, REDIS_MEMORY_MAX, REDIS_MEMORY_USED
from conveyor_core.redis import RedisClient, describe_redis_error, redis_fault
from conveyor_core.settings import RedisSettings

logger = logging.getLogger(__name__)

# The only policy under which Redis keeps every acknowledged job.
SAFE_POLICY = "noeviction"
# After a failed check, try again this soon (doubling up to the interval).
RETRY_AFTER_FAILURE_S = 1.0
# While the last reading said Redis may evict, a submit reads the policy again
# when that reading is older than this: submits resume soon after a fix.
RECHECK_WHILE_UNSAFE_S = 1.0


class RedisEvictsError(Exception):
    """Redis may evict (and eviction is not allowed): a new job must not be acknowledged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """What INFO memory said, at one moment."""

    policy: str
    used_bytes: int
    max_bytes: int  # 0: no limit

    @property
    def evicts(self) -> bool:
        return self.policy != SAFE_POLICY

    @property
    def full(self) -> bool:
        """At maxmemory: a `noeviction` Redis refuses writes (reads still work)."""
        return 0 < self.max_bytes <= self.used_bytes

    @property
    def used_ratio(self) -> float | None:
        """Used memory over maxmemory, or None without a limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None

    @classmethod
    def of(cls, info: dict[str, Any]) -> "RedisMemory":
        """The reading in one node's INFO memory."""
        return cls(
            policy=str(info.get("maxmemory_policy", "unknown")),
            used_bytes=int(info.get("used_memory", 0)),
            max_bytes=int(info.get("maxmemory", 0)),
        )


def cluster_memory(readings: list[RedisMemory]) -> RedisMemory:
    """A cluster's reading from its primaries': an evicting one first, then the fullest."""
    unsafe = [memory for memory in readings if memory.evicts]
    return max(unsafe or readings, key=lambda memory: memory.used_ratio or 0.0)


async def read_memory(redis: RedisClient) -> RedisMemory:
    """INFO memory of one Redis, or of every primary of a cluster (see `cluster_memory`)."""
    if isinstance(redis, ClusterClient):
        by_node: dict[str, dict[str, Any]] = await redis.info(
            "memory", target_nodes=ClusterClient.PRIMARIES
        )
        return cluster_memory([RedisMemory.of(info) for info in by_node.values()])
    info: dict[str, Any] = await redis.info("memory")
    return RedisMemory.of(info)


class RedisHealth:
    """The last reading of Redis' memory, and the task that refreshes it.

    Both services hold one: the api's /readyz and the worker's /readyz read
    `not_ready_reason`, the api's status page reads `public()`.
    """

    def __init__(self, redis: RedisClient, settings: RedisSettings, service: str) -> None:
        self._redis = redis
        self._settings = settings
        self._service = service
        self.memory: RedisMemory | None = None
        self.checked_at_s: float | None = None  # monotonic time of the last good reading
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[RedisMemory] | None = None  # a read_now() under way
        self._info_refused_at_s: float | None = None  # when a submit's INFO was last refused
        self._stopping = asyncio.Event()

    @property
    def not_ready_reason(self) -> str | None:
        """Why the service must not take traffic, or None when Redis is safe to use."""
        if self.memory is None or not self.memory.evicts or self._settings.allow_eviction:
            return None
        return (
            f"Redis' maxmemory-policy is {self.memory.policy}, not {SAFE_POLICY}: a full Redis "
            "would silently drop acknowledged jobs. Set maxmemory-policy noeviction (or, "
            "knowingly, REDIS_ALLOW_EVICTION=true)."
        )

    async def refuse_if_unsafe(self) -> None:
        """Raise RedisEvictsError while Redis may drop what it is given: a job the
        api acknowledged there could vanish. The api calls it before each submit.

        Reads the last reading (refreshed every `memory_check_interval_s` and at
        each /readyz), or reads now when there is none yet or when the last one
        said "unsafe" more than a second ago. A Redis fault propagates. A Redis
        that refuses INFO (a managed one may) cannot say: submits go on, and the
        periodic check says so in the log.
        """
        now_s = time.monotonic()
        stale_unsafe = (
            self.not_ready_reason is not None
            and self.checked_at_s is not None
            and now_s - self.checked_at_s > RECHECK_WHILE_UNSAFE_S
        )
        refused_lately = (
            self._info_refused_at_s is not None
            and now_s - self._info_refused_at_s < self._settings.memory_check_interval_s
        )
        if (self.memory is None or stale_unsafe) and not refused_lately:
            try:
                await self.read_now()
            except Exception as exc:
                if redis_fault(exc) is not None:
                    raise
                self._info_refused_at_s = now_s
        if reason := self.not_ready_reason:
            raise RedisEvictsError(reason)

    def public(self) -> dict[str, Any]:
        """What the status page shows: the policy and how full Redis is (no addresses)."""
        if self.memory is None:
            return {"maxmemory_policy": None}
        ratio = self.memory.used_ratio
        return {
            "maxmemory_policy": self.memory.policy,
            "evicts": self.memory.evicts,
            "eviction_allowed": self._settings.allow_eviction,
            "memory_used_ratio": round(ratio, 4) if ratio is not None else None,
            "full": self.memory.full,
        }

    async def read_now(self) -> RedisMemory:
        """A fresh reading; callers at the same moment share one INFO call."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self.check())
            # Its error is each waiter's; retrieved here too, in case all gave up.
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())
        # Shielded: one caller's cancel (its client went away) ends no one else's wait.
        return await asyncio.shield(self._reading)

    async def check(self) -> RedisMemory:
        """Read INFO memory once (bounded by the socket timeout), export it, warn if unsafe."""
        async with asyncio.timeout(self._settings.socket_timeout_s):
            memory = await read_memory(self._redis)
        previous, self.memory = self.memory, memory
        self.checked_at_s = time.monotonic()
        REDIS_MAXMEMORY_POLICY.clear()
        REDIS_MAXMEMORY_POLICY.labels(memory.policy).set(1)
        REDIS_MEMORY_USED.set(memory.used_bytes)
        REDIS_MEMORY_MAX.set(memory.max_bytes)
        if memory.evicts and (previous is None or previous.policy != memory.policy):
            consequence = (
                "REDIS_ALLOW_EVICTION is set, so it stays ready"
                if self._settings.allow_eviction
                else "it refuses to be ready until the policy is noeviction "
                "(or REDIS_ALLOW_EVICTION=true)"
            )
            logger.warning(
                "redis maxmemory-policy is %s, not %s: when Redis fills up it will silently "
                "drop acknowledged jobs; the %s warns, and %s",
                memory.policy,
                SAFE_POLICY,
                self._service,
                consequence,
                extra={"maxmemory_policy": memory.policy},
            )
        elif previous is not None and previous.evicts and not memory.evicts:
            logger.info("redis maxmemory-policy is %s again", memory.policy)
        return memory

    def start(self) -> None:
        """Check now and then every `memory_check_interval_s`, until `stop()`."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="redis-health")

    async def stop(self) -> None:
        """End the checks. The stop flag, not only a cancel, ends the loop: a cancel
        that lands while redis-py handles a reply can be lost (seen with 5.3)."""
        if self._reading is not None:  # a fresh reading no one waits for any more
            self._reading.cancel()
        if self._task is None:
            return
        self._stopping.set()
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=self._settings.socket_timeout_s + 1)
        self._task = None

    async def _run(self) -> None:
        interval_s = self._settings.memory_check_interval_s
        first_retry_s = min(RETRY_AFTER_FAILURE_S, interval_s)
        retry_s = first_retry_s
        while not self._stopping.is_set():
            try:
                await self.check()
                retry_s = first_retry_s
                await self._pause(interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis down is said elsewhere (readiness, redis_up); a refused INFO
                # (a managed Redis may forbid it) is said here, once per failure run.
                if redis_fault(exc) is None and retry_s == first_retry_s:
                    logger.warning("cannot read redis INFO memory: %s", describe_redis_error(exc))
                await self._pause(retry_s)
                retry_s = min(retry_s * 2, interval_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if `stop()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
