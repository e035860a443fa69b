"""Every Prometheus metric Conveyor exports, named once (docs/reference/metrics.md
is generated from them: `make docs-reference`).

prometheus-client's default registry, one process per pod; labels are bounded:
route templates, job type names and queue names, never ids or raw paths.
"""

import time
from bisect import bisect_left
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.samples import Exemplar
from prometheus_client.values import MutexValue

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# -- api --
HTTP_REQUESTS = Counter(
    "conveyor_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route", "status"],
    buckets=DURATION_BUCKETS_S,
)
QUEUE_JOBS = Gauge(
    "conveyor_queue_jobs",
    "Jobs per queue by state: ready, deferred, in_progress, dead (the dead letters).",
    ["queue", "state"],
)
QUEUE_OLDEST_READY_AGE = Gauge(
    "conveyor_queue_oldest_ready_age_seconds",
    "How long the oldest ready job has waited since it was due (queue latency).",
    ["queue"],
)
API_KEYS_RELOADS = Counter(
    "conveyor_api_keys_reloads",
    "Changes of the api keys file (CONVEYOR_API_KEYS_FILE) seen, by outcome: applied, "
    "invalid or unreadable (the keys in force then stay).",
    ["outcome"],
)
API_KEYS_FILE_REJECTED = Gauge(
    "conveyor_api_keys_file_rejected",
    "1 while the api keys file (its path) as it is now is not in force (invalid or "
    "unreadable): the keys last read serve, and a key removed since still works.",
    ["path"],
)
LIVE_STREAMS = Gauge("conveyor_api_live_streams", "Live (SSE) streams this api process serves now.")
LIVE_STREAMS_REFUSED = Counter(
    "conveyor_api_live_streams_refused",
    "Live streams refused (429): over the key's limit or the process's.",
    ["limit"],
)

# -- both: the enqueue helper --
JOBS_ENQUEUED = Counter("conveyor_jobs_enqueued", "Jobs enqueued.", ["job", "queue"])
REDIS_UP = Gauge("conveyor_redis_up", "1 if Redis answered this process's last command.")

# -- both: Redis faults and the memory check (redis.py, redis_health.py) --
REDIS_ERRORS = Counter(
    "conveyor_redis_errors",
    "Redis faults met, by kind: unreachable, timed_out, out_of_memory, read_only, loading, "
    "cluster_down, busy.",
    ["kind"],
)
REDIS_MAXMEMORY_POLICY = Gauge(
    "conveyor_redis_maxmemory_policy_info",
    "1 for Redis' maxmemory-policy as last read; anything but noeviction loses jobs.",
    ["policy"],
)
REDIS_WAIT_SHORT = Counter(
    "conveyor_redis_wait_short",
    "Submits whose job fewer replicas than REDIS_WAIT_REPLICAS acknowledged within "
    "REDIS_WAIT_TIMEOUT_MS (Redis WAIT): written on the primary only, so a failover now "
    "may lose it; the client got a 503 (replicas.py).",
    ["queue"],
)
REDIS_MEMORY_USED = Gauge("conveyor_redis_memory_used_bytes", "Redis' used_memory, as last read.")
REDIS_MEMORY_MAX = Gauge(
    "conveyor_redis_memory_max_bytes", "Redis' maxmemory as last read (0: no limit)."
)

# -- both: bytes out of the broker (claimcheck.py, stored_bytes.py) --
BLOB_BYTES_WRITTEN = Counter(
    "conveyor_blob_bytes_written",
    "Bytes written to the blob store, by kind: payload, result (offloaded by a job "
    "type's offload_above_bytes) or document.",
    ["kind"],
)
BLOB_OFFLOADS = Counter(
    "conveyor_blob_offloads",
    "Payloads and results kept in the blob store instead of Redis (claim-check), by kind.",
    ["kind"],
)
STORED_BYTES = Gauge(
    "conveyor_stored_bytes",
    "Bytes an api key with a quota has in the blob store (documents, offloaded "
    "payloads), as the quota counts them: read from Redis every minute and at each write.",
    ["api_key"],
)
STORED_BYTES_LIMIT = Gauge(
    "conveyor_stored_bytes_limit",
    "An api key's quota of stored bytes (max_stored_bytes); unset: no series.",
    ["api_key"],
)

# -- worker: each try (process.py) --
JOBS_STARTED = Counter("conveyor_jobs_started", "Job tries started.", ["job", "queue"])
JOBS_FINISHED = Counter(
    "conveyor_jobs_finished",
    "Job tries finished, by outcome: complete; retrying (failed, another try is due); "
    "dead (a permanent error or no tries left: to the dead letters); cancelled; "
    "interrupted (cut short by a shutdown: queued again, the try not counted); "
    "snoozed (asked to run later, or met a partner's rate limit: the try not counted).",
    ["job", "queue", "outcome"],
)
JOB_DURATION = Histogram(
    "conveyor_job_duration_seconds",
    "Time a job try ran.",
    ["job", "queue", "outcome"],
    buckets=DURATION_BUCKETS_S,
)
JOB_QUEUE_WAIT = Histogram(
    "conveyor_job_queue_wait_seconds",
    "Time from when a try was due (deferral and backoff excluded) to its start.",
    ["job", "queue"],
    buckets=DURATION_BUCKETS_S,
)
JOBS_IN_PROGRESS = Gauge("conveyor_jobs_in_progress", "Job tries running now.", ["job", "queue"])
STALE_CALLS = Counter(
    "conveyor_stale_calls",
    "Calls of a stale try refused: its lock lapsed and another worker claimed the job "
    "again, so its end, progress report, checkpoint or lock renewal changes nothing. By "
    "call: end, progress, checkpoint, renew.",
    ["queue", "call"],
)
# -- worker: the claim (flow control) --
QUEUE_PAUSED = Gauge(
    "conveyor_queue_paused", "1 while the queue is paused (its workers start nothing).", ["queue"]
)
QUEUE_PAUSED_SECONDS = Gauge(
    "conveyor_queue_paused_seconds",
    "How long the queue has been paused; 0 while it runs.",
    ["queue"],
)
JOBS_HELD = Gauge(
    "conveyor_jobs_held",
    "Held jobs: due jobs the worker's last claim passed over, by why: limit (their type "
    "or key is at its running limit), rate (it started as many as its rate allows) or "
    "held (a handler met a partner's rate limit and held their type or key).",
    ["queue", "reason"],
)
WORKER_HEARTBEAT = Gauge(
    "conveyor_worker_heartbeat_timestamp_seconds",
    "Unix time of this worker's last poll loop turn.",
    ["queue"],
)


Metric = TypeVar("Metric", bound=MetricWrapperBase)


class LabelCache(Generic[Metric]):
    """A metric's children, found once per set of label values.

    `metric.labels(...)` checks and joins the values and takes the metric's lock
    on every call; on a per-request path a dict lookup does instead. The keys
    are the label values, so the cache is as bounded as the metric's labels.
    """

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self._children: dict[Hashable, Metric] = {}

    def get(self, values: tuple[object, ...]) -> Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


def increment(child: Counter) -> Callable[[float], None]:
    """`child.inc` for a per-job path: its value's own increment, without the
    checks of an amount and an exemplar the caller never passes (a call
    less and a lock's worth of work fewer per job). The child exports the same.
    Its caller is the series' one writer (as Observer's): an in-process value
    is then added to without its lock."""
    value = child._value
    if type(value) is not MutexValue:  # a multiprocess setup's file
        return value.inc  # type: ignore[no-any-return]

    def add(amount: float) -> None:
        value._value += amount

    return add


class Observer:
    """`child.observe(amount, exemplar)` of a labelled histogram for a per-job
    path: the bucket found by bisection, not by a loop over every bound, and
    the exemplar (the caller's trace id, valid as it is made) not checked
    again. It writes the child's own values, so the child exports the same.

    Its owner is the one thread that writes the series (the worker's event
    loop): in-process values are then written without their locks, which
    guard against a second writer only. A scrape reads each value under its
    lock, and sees it before or after a write, as with the lock."""

    __slots__ = ("_bounds", "_buckets", "_sum", "_unlocked")

    def __init__(self, child: Histogram) -> None:
        self._sum = child._sum
        self._buckets = child._buckets
        self._bounds = tuple(child._upper_bounds)  # the last is +Inf: every amount has one
        # Not the files of a multiprocess setup, whose writes are more than an attribute's.
        self._unlocked = all(type(v) is MutexValue for v in (child._sum, *child._buckets))

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        bucket = self._buckets[bisect_left(self._bounds, amount)]
        if self._unlocked:
            self._sum._value += amount
            bucket._value += 1
            if exemplar:
                bucket._exemplar = Exemplar(exemplar, amount, time.time())
            return
        self._sum.inc(amount)
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(Exemplar(exemplar, amount, time.time()))
