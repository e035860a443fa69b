"""Redis connections, built the same way in both services.

`connect(settings)` gives the client REDIS_URL names: arq's `ArqRedis` for a
single node (or the master Sentinel names), `ClusterClient` for a Redis
Cluster (cluster.py says how it fits). `RedisClient` is the type of code
that runs on both.
"""

import builtins
import logging
import re
import time
from enum import StrEnum
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import hiredis
from arq.connections import ArqRedis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    DataError,
    InvalidResponse,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor_core.cluster import ClusterClient, create_cluster
from conveyor_core.metrics import REDIS_ERRORS
from conveyor_core.redaction import clean
from conveyor_core.serializer import job_deserializer, job_serializer
from conveyor_core.settings import RedisSettings

logger = logging.getLogger(__name__)

# A client of a single node, a Sentinel-named master, or a Redis Cluster.
RedisClient: TypeAlias = ArqRedis | ClusterClient

# Errors that mean "Redis is unreachable right now", as opposed to a bad command.
# InvalidResponse: what answers at Redis's address does not speak Redis (the
# port taken by another server, plain text sent to a TLS port).
REDIS_DOWN_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    InvalidResponse,
)


class RedisFault(StrEnum):
    """What went wrong with Redis, as clients, logs and metrics name it."""

    # Refused, reset, DNS, wrong password, not Redis at the address: no Redis answer at all.
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed_out"  # connected, but no reply in time (a frozen or overloaded server)
    OUT_OF_MEMORY = "out_of_memory"  # at maxmemory with noeviction: writes refused, reads work
    READ_ONLY = "read_only"  # a replica, typically just after a failover
    LOADING = "loading"  # restarted, still loading its data set into memory
    # A cluster with slots unserved or moving: a failover or resharding under way.
    CLUSTER_DOWN = "cluster_down"
    # A script or function ran past busy-reply-threshold: every other command gets BUSY.
    BUSY = "busy"

    @property
    def transient(self) -> bool:
        """Clears by itself in seconds: worth a quick retry (503 + Retry-After)."""
        return self is not RedisFault.OUT_OF_MEMORY


# A cluster's own faults: a slot unserved or moving (a failover, resharding),
# whatever redis-py made of it (ClusterError covers ClusterDownError, and
# AskError MovedError).
CLUSTER_FAULT_ERRORS: tuple[type[Exception], ...] = (
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    AskError,
)


class RedisBusyError(ResponseError):
    """Redis answered BUSY: a script runs past its busy-reply-threshold."""


# redis-py makes a plain ResponseError of BUSY (as of a bad command): given a
# class of its own, it reaches every loop that catches REDIS_FAULT_ERRORS, also
# inside a pipeline. BUSYKEY and BUSYGROUP are other codes (a bad command).
for _parser in (BaseParser, ClusterParser):
    _parser.EXCEPTION_CLASSES["BUSY"] = RedisBusyError

# Every exception class that means "a Redis fault", not a bad command: what a
# loop that must survive Redis trouble catches. `redis_fault` names which one.
REDIS_FAULT_ERRORS: tuple[type[Exception], ...] = (
    *REDIS_DOWN_ERRORS,
    OutOfMemoryError,
    ReadOnlyError,
    RedisBusyError,
    *CLUSTER_FAULT_ERRORS,
)

# Every kind exported at 0 from the start: rate() cannot see a counter born at 1.
for _fault in RedisFault:
    REDIS_ERRORS.labels(_fault.value)

# A reply error Redis sends with one of these prefixes is the fault named,
# whatever class the client made of it (e.g. inside a script or a pipeline).
_REPLY_PREFIXES = {
    "OOM": RedisFault.OUT_OF_MEMORY,
    "READONLY": RedisFault.READ_ONLY,
    # A blocked call (WAIT) ended because its primary turned replica.
    "UNBLOCKED": RedisFault.READ_ONLY,
    "LOADING": RedisFault.LOADING,
    "CLUSTERDOWN": RedisFault.CLUSTER_DOWN,
    "TRYAGAIN": RedisFault.CLUSTER_DOWN,
    "MOVED": RedisFault.CLUSTER_DOWN,
    "ASK": RedisFault.CLUSTER_DOWN,
    "BUSY": RedisFault.BUSY,
}


def redis_fault(exc: BaseException) -> RedisFault | None:
    """Which Redis fault `exc` is, or None when it is not one (a bug, a bad command).

    The one place Redis errors are classified; the api's problem answers, the
    logs and `conveyor_redis_errors_total{kind}` all use its names.
    """
    if isinstance(exc, BusyLoadingError):  # a subclass of ConnectionError: first
        return RedisFault.LOADING
    if isinstance(exc, OutOfMemoryError):
        return RedisFault.OUT_OF_MEMORY
    if isinstance(exc, ReadOnlyError):
        return RedisFault.READ_ONLY
    if isinstance(exc, RedisBusyError):
        return RedisFault.BUSY
    # ClusterDownError, MasterDownError, "TTL exhausted" (a key moved too many
    # times), TRYAGAIN, a slot no node serves, a redirect redis-py gave up on.
    if isinstance(exc, CLUSTER_FAULT_ERRORS):
        return RedisFault.CLUSTER_DOWN
    if isinstance(exc, RedisTimeoutError | builtins.TimeoutError):
        return RedisFault.TIMED_OUT
    if isinstance(exc, RedisConnectionError | builtins.ConnectionError | InvalidResponse):
        return RedisFault.UNREACHABLE
    if isinstance(exc, ResponseError):
        # A pipeline's error names the command first, then Redis' reply.
        code = str(exc).rpartition(_PIPELINE_REPLY)[2].lstrip("('\"").split(" ", 1)[0]
        return _REPLY_PREFIXES.get(code)
    return None


# What redis-py makes of an error in a pipeline: the command with all its
# arguments (a whole uploaded document), then the reply.
_PIPELINE_ERROR = re.compile(r"Command # (\d+) \((\S{0,64})")
_PIPELINE_REPLY = " of pipeline caused error: "
# A description of a Redis error keeps this much of its reply.
ERROR_MAX_CHARS = 256


def describe_redis_error(exc: BaseException) -> str:
    """`exc` as a log line or a span may show it: its class and Redis' reply,
    bounded and scrubbed, never the command's arguments.

    redis-py puts a failed pipeline command's arguments in the message (so one
    refused 5 MiB upload made a 5 MiB log line); the reply alone says what
    went wrong, and the command's name says where.
    """
    message = str(exc)
    if (found := _PIPELINE_ERROR.match(message)) and _PIPELINE_REPLY in message:
        reply = message.rpartition(_PIPELINE_REPLY)[2]
        if reply.startswith("(") and reply.endswith(",)"):  # the error's args, as a tuple
            reply = reply[1:-2].strip("'\"")
        message = f"{reply} (pipeline command #{found[1]}, {found[2] or '?'})"
    return f"{type(exc).__name__}: {clean(message, ERROR_MAX_CHARS)}"


# A fault is logged at most once per kind in this many seconds; the metric counts every one.
FAULT_LOG_INTERVAL_S = 5.0
_last_logged_s: dict[RedisFault, float] = {}
_unlogged: dict[RedisFault, int] = {}


def record_redis_fault(fault: RedisFault, exc: BaseException, where: str) -> None:
    """Count a fault in the metric, and log it (at most once per kind every few seconds)."""
    REDIS_ERRORS.labels(fault.value).inc()
    now_s = time.monotonic()
    if now_s - _last_logged_s.get(fault, -FAULT_LOG_INTERVAL_S) < FAULT_LOG_INTERVAL_S:
        _unlogged[fault] = _unlogged.get(fault, 0) + 1
        return
    _last_logged_s[fault] = now_s
    more = _unlogged.pop(fault, 0)
    logger.warning(
        "redis fault %s in %s: %s%s",
        fault.value,
        clean(where, ERROR_MAX_CHARS),
        describe_redis_error(exc),
        f" ({more} more since the last such line)" if more else "",
        extra={"redis_fault": fault.value},
    )


async def _connection_connected_outside_any_lock(pool: ConnectionPool) -> AbstractConnection:
    """A connection of `pool`, connected (if new) side by side with any other.

    redis-py 5's pool holds one lock across a new connection's connect and
    handshake: while Redis hangs, each waiting request queues behind every
    earlier one's socket timeout (20 concurrent requests: the last 503 after
    ~17 s). Taking a connection is synchronous, so on one event loop it needs
    no lock; the connect is awaited outside any, as redis-py's own
    BlockingConnectionPool does it.
    """
    connection: AbstractConnection = pool.get_available_connection()  # type: ignore[no-untyped-call]
    try:
        await pool.ensure_connection(connection)
    except BaseException:
        await pool.release(connection)
        raise
    return connection


class PackedInC:
    """A connection that packs commands with hiredis (C), as redis-py's own
    synchronous client does when hiredis is there; its asyncio client packs in
    Python, a tenth of the speed: for the worker's end of a try (one call of
    some twenty arguments) a share of every job's CPU. The bytes are the same
    for every value redis-py accepts (tests/core/test_redis.py)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # A command given as one string with its subcommand ('CONFIG GET') is
        # sent as separate words, as redis-py sends it.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # what redis-py says of a value it cannot send
            raise DataError(str(exc)) from exc


# Each connection class with PackedInC before it, made once.
_PACKED_IN_C: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packed_in_c(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    packed = _PACKED_IN_C.get(connection_class)
    if packed is None:
        packed = type(connection_class.__name__, (PackedInC, connection_class), {})
        _PACKED_IN_C[connection_class] = packed
    return packed


def _pack_in_c(pool: ConnectionPool) -> None:
    """Let `pool` make connections that pack in C, unless its text is not
    UTF-8 (strict), which is all hiredis writes."""
    kwargs = pool.connection_kwargs
    if (
        kwargs.get("encoding", "utf-8") == "utf-8"
        and kwargs.get("encoding_errors", "strict") == "strict"
    ):
        pool.connection_class = _packed_in_c(pool.connection_class)


class ParallelConnectionPool(ConnectionPool):
    """redis-py's pool, but new connections connect side by side (and pack
    commands in C)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _pack_in_c(self)

    async def get_connection(  # type: ignore[no-untyped-def]
        self, command_name=None, *keys, **options
    ) -> AbstractConnection:
        return await _connection_connected_outside_any_lock(self)


class ParallelSentinelConnectionPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, but new connections connect side by side (and
    pack commands in C)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        _pack_in_c(self)

    async def get_connection(  # type: ignore[no-untyped-def]
        self, command_name=None, *keys, **options
    ) -> AbstractConnection:
        return await _connection_connected_outside_any_lock(self)


def connect(settings: RedisSettings, *, timeout_each_read: bool = True) -> RedisClient:
    """The client REDIS_URL names: a cluster's for `redis+cluster://`, else `create_redis`'s.

    Both connect lazily, with the same timeouts, retry, credentials and TLS.
    """
    if settings.cluster:
        return _cluster(settings, _options(settings, timeout_each_read=timeout_each_read))
    return create_redis(settings, timeout_each_read=timeout_each_read)


def create_redis(settings: RedisSettings, *, timeout_each_read: bool = True) -> ArqRedis:
    """An arq-capable client of one Redis (or the master Sentinel names) that connects lazily.

    Unlike `arq.create_pool` it does not PING on creation, so a service starts
    while Redis is down and serves again by itself once Redis is back. One
    quick retry hides a connection that went stale across a Redis restart.
    REDIS_USERNAME, REDIS_PASSWORD and, for rediss://, REDIS_TLS_CA_FILE apply here, so the
    api and the worker connect the same way.

    With `timeout_each_read`, every reply is awaited under the socket timeout;
    redis-py then opens an asyncio timeout per reply, which costs the worker a
    quarter of its CPU per job. The worker turns it off and bounds each turn of
    its loop instead.

    A Redis that hangs costs at most `socket_timeout_s` per command: a timeout
    is never retried (only a dropped connection is, once), so a request
    answers 503 within that bound.

    A cluster URL is refused here: `connect` builds its client.
    """
    if settings.cluster:
        raise ValueError(
            f"REDIS_URL {settings.safe_url()} names a Redis Cluster: connect() builds its client"
        )
    options = _options(settings, timeout_each_read=timeout_each_read)
    if settings.sentinel_hosts:
        redis = _sentinel_master(settings, options)
    else:
        pool = ParallelConnectionPool.from_url(
            settings.connection_url(), health_check_interval=30, **options
        )
        redis = ArqRedis.from_pool(pool)  # type: ignore[assignment]
    # Job data is JSON, never pickle (serializer.py), also where arq's own
    # client code runs on this connection (enqueue_job, Job).
    redis.job_serializer = job_serializer
    redis.job_deserializer = job_deserializer
    return redis


def _options(settings: RedisSettings, *, timeout_each_read: bool) -> dict[str, Any]:
    """Connection options every kind of client shares."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s if timeout_each_read else None,
        # Only a dropped connection is retried: a retried timeout doubles the
        # time to a 503 while Redis hangs.
        "retry": Retry(
            ExponentialBackoff(cap=0.2, base=0.02),
            retries=1,
            supported_errors=(RedisConnectionError,),
        ),
    }
    if settings.username:  # a username in the URL wins
        options["username"] = settings.username
    if settings.tls:
        options |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if settings.tls_ca_file:
            options["ssl_ca_certs"] = settings.tls_ca_file
    return options


def _cluster(settings: RedisSettings, options: dict[str, Any]) -> ClusterClient:
    """A client of the cluster the URL's seeds belong to; it follows a failover by itself."""
    username, password = settings.cluster_credentials()
    if username:
        options["username"] = username
    if settings.tls:
        options["ssl"] = True
    return create_cluster(
        settings.cluster_seeds,
        password=password,
        health_check_interval=30,
        # The node's retry is ours (a dropped connection, once); not also timeouts.
        retry_on_error=[RedisConnectionError],
        **options,
    )


def _sentinel_master(settings: RedisSettings, options: dict[str, Any]) -> ArqRedis:
    """A client of the master the sentinels name; it follows a failover by itself."""
    url = urlsplit(settings.url)
    timeouts = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
    }
    password = settings.password.get_secret_value() if settings.password else url.password
    sentinel = Sentinel(settings.sentinels, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    client: ArqRedis = sentinel.master_for(
        settings.sentinel_master,
        redis_class=ArqRedis,
        connection_pool_class=ParallelSentinelConnectionPool,
        db=int(url.path.strip("/") or 0),
        password=password,
        **options,
    )
    return client
