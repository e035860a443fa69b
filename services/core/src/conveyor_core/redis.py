"""Redis connections, built the same way in both services."""

from typing import Any

from arq.connections import ArqRedis
from redis.asyncio.retry import Retry
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


def create_redis(settings: RedisSettings) -> ArqRedis:
    """An arq-capable client that connects lazily.

    Unlike `arq.create_pool` it does not PING on creation, so a service starts
    while Redis is down and serves again by itself once Redis is back. One
    quick retry hides a connection that went stale across a Redis restart.
    REDIS_PASSWORD and, for rediss://, REDIS_TLS_CA_FILE apply here, so the
    api and the worker connect the same way.
    """
    tls: dict[str, Any] = {}
    if settings.tls:
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if settings.tls_ca_file:
            tls["ssl_ca_certs"] = settings.tls_ca_file
    return ArqRedis.from_url(  # type: ignore[no-any-return]
        settings.connection_url(),
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        **tls,
    )
