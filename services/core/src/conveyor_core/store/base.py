"""The parts of the store share one Redis client, one catalog and the scripts."""

from collections.abc import Awaitable, Callable

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.blobs import BlobStore
from conveyor_core.catalog import Catalog, load_catalog
from conveyor_core.cluster import ClusterClient
from conveyor_core.flow import claim_limits
from conveyor_core.functions import FunctionLibrary
from conveyor_core.lua import job_library, lua_script
from conveyor_core.ratelimit import RateLimit
from conveyor_core.store.declared import claim_keys


class StoreBase:
    """The store's connection, catalog and scripts, which every part shares."""

    def __init__(
        self,
        redis: ArqRedis,
        catalog: Catalog | None = None,
        *,
        admit: Callable[[], Awaitable[None]] | None = None,
        blobs: BlobStore | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        # On a cluster one call touches one slot: what is the caller's (its
        # rate limiter) is spent by a call of its own; a single node's scripts
        # spend it in the same call (one round trip less).
        self.one_slot_per_call = isinstance(redis, ClusterClient)
        self.catalog = catalog or load_catalog()
        # Where offloaded payloads and results go (claimcheck.py); None: every
        # job keeps its payload and result inline.
        self.blobs = blobs
        # Awaited before each submit; raises to refuse it (the api's: not while
        # Redis may evict, redis_health.RedisHealth.refuse_if_unsafe).
        self._admit = admit
        # A submit that creates a job waits (WAIT) until this many replicas
        # hold it, at most this long (REDIS_WAIT_REPLICAS; replicas.py).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        script = redis.register_script
        # The scripts every job runs (submit, claim, the end of a try) are
        # Redis functions: their libraries are built once, not per call
        # (functions.py).
        self.functions = jobs = FunctionLibrary(redis, *job_library())
        self._submit = jobs.function("submit")
        self._rate_limit = script(lua_script("rate_limit"))
        self._quota = script(lua_script("quota"))
        self._link = script(lua_script("link"))
        self._claim = jobs.function("claim")
        self._finish = jobs.function("finish")
        # The same end of a try that also claims (finish and fetch) adds data:
        # without allow-oom, so a full Redis refuses it whole (then the try ends
        # with no claim, as a full Redis refuses claims).
        self._finish_and_fetch = jobs.function("finish_and_fetch")
        self._settle = script(lua_script("settle"))
        self._progress = script(lua_script("progress"))
        self._checkpoint = script(lua_script("checkpoint"))
        self._renew = script(lua_script("renew"))
        self._cancel = script(lua_script("cancel"))
        self._requeue = script(lua_script("requeue"))
        self._trim = script(lua_script("trim"))
        self._page = script(lua_script("page"))
        self._read_one = script(lua_script("read"))
        self._queue_stats = script(lua_script("queue_stats"))
        self._pause = script(lua_script("pause"))
        self._bulk = script(lua_script("bulk"))
        self._group_create = script(lua_script("group_create"))
        self._group_submit = script(lua_script("group_submit"))
        self._group_cancel = script(lua_script("group_cancel"))
        self._group_outbox = script(lua_script("group_outbox"))
        self._group_continue = script(lua_script("group_continue"))
        # Per queue shard: its limited job types as its claim reads them ('' for
        # none), a whole type's limits split over the queue's shards.
        self._claim_limits: dict[str, str] = {}
        # Per queue shard: the keys its claim declares beyond its first four
        # (store/declared.py, claim_keys), made once.
        self._claim_keys: dict[str, list[str]] = {}
        for queue in self.catalog.queues():
            job_types = self.catalog.for_queue(queue)
            limited = [(t.name, t.limits) for t in job_types if t.limits]
            shards = self.catalog.shards(queue)
            for index, shard in enumerate(shards):
                self._claim_limits[shard] = claim_limits(limited, len(shards), index)
                self._claim_keys[shard] = claim_keys(shard, job_types)

    def claim_keys_of(self, shard: str) -> list[str]:
        """The keys a claim of `shard` declares beyond its first four (a queue
        the catalog does not know has no limited types)."""
        known = self._claim_keys.get(shard)
        return known if known is not None else claim_keys(shard, ())

    def shard_of(self, job_id: str, queue: str) -> str:
        """The shard of `queue` a job lives on: the one its id names
        (keys.job_id_for), else (an id with no tag, a bare arq client's, or
        a tag of another queue's) the queue's shard 0."""
        shard = keys.queue_of(job_id)
        return shard if shard is not None and keys.queue_of_shard(shard) == queue else queue

    async def _limiter(self, rate_limit: RateLimit | None, absent: str) -> tuple[str, float | None]:
        """The limiter key a script spends the caller's rate with (`absent`
        when there is none to spend), and None; or, on a cluster, where the
        limiter is in a slot of its own, `absent` and what a call of its own
        answered: None when allowed, else the seconds to wait."""
        if rate_limit is None:
            return absent, None
        if not self.one_slot_per_call:
            return rate_limit.key, None
        allowed, retry_after_us, _ = await self._rate_limit(
            keys=[rate_limit.key], args=[rate_limit.interval_us, rate_limit.burst]
        )
        return absent, None if allowed else int(retry_after_us) / 1_000_000
