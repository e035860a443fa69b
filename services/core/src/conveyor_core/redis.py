"""Redis connections, built the same way in both services."""

from typing import Any
from urllib.parse import urlsplit

from arq.connections import ArqRedis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor_core.settings import RedisSettings

# Errors that mean "Redis is unreachable right now", as opposed to a bad command.
REDIS_DOWN_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


def create_redis(settings: RedisSettings, *, timeout_each_read: bool = True) -> ArqRedis:
    """An arq-capable client that connects lazily.

    Unlike `arq.create_pool` it does not PING on creation, so a service starts
    while Redis is down and serves again by itself once Redis is back. One
    quick retry hides a connection that went stale across a Redis restart.
    REDIS_PASSWORD and, for rediss://, REDIS_TLS_CA_FILE apply here, so the
    api and the worker connect the same way.

    With `timeout_each_read`, every reply is awaited under the socket timeout;
    redis-py then opens an asyncio timeout per reply, which costs the worker a
    quarter of its CPU per job. The worker turns it off and bounds each turn of
    its loop instead.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s if timeout_each_read else None,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if settings.tls:
        options |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if settings.tls_ca_file:
            options["ssl_ca_certs"] = settings.tls_ca_file
    if settings.sentinel_hosts:
        return _sentinel_master(settings, options)
    return ArqRedis.from_url(  # type: ignore[no-any-return]
        settings.connection_url(), health_check_interval=30, **options
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
        db=int(url.path.strip("/") or 0),
        password=password,
        **options,
    )
    return client
