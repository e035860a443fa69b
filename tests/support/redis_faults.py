"""Put a real Redis into the states Conveyor must survive: frozen, full, evicting, a replica."""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import redis as redis_sync


def _client(url: str) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(url, socket_timeout=2)


@contextmanager
def frozen(url: str) -> Iterator[None]:
    """The server stopped with SIGSTOP (it accepts connections, answers nothing), then SIGCONT."""
    with _client(url) as client:
        pid = int(client.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def configured(url: str, **config: str | int) -> Iterator[None]:
    """CONFIG SET for the block (e.g. maxmemory_policy="allkeys-lru"), then the old values back."""
    names = {key: key.replace("_", "-") for key in config}
    with _client(url) as client:
        before = {name: client.config_get(name)[name] for name in names.values()}
        for key, value in config.items():
            client.config_set(names[key], value)
    try:
        yield
    finally:
        with _client(url) as client:
            for name, value in before.items():
                client.config_set(name, value)


@contextmanager
def full(url: str) -> Iterator[None]:
    """maxmemory below what Redis already uses, with noeviction: every write is refused (OOM)."""
    with configured(url, maxmemory=1, maxmemory_policy="noeviction"):
        yield


@contextmanager
def read_only_replica(url: str) -> Iterator[None]:
    """A replica of a master that is not there (as just after a failover): writes get READONLY."""
    with _client(url) as client:
        client.replicaof("127.0.0.1", "1")
        try:
            yield
        finally:
            client.replicaof("NO", "ONE")
