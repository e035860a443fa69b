"""Put a real Redis into the states Conveyor must survive: frozen, full, evicting, a replica."""

import os
import signal
import threading
import time
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


# Holds the server for `ARGV[1]` milliseconds (not to TIME's whole second).
_HOLD_SERVER = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local deadline = now_ms() + tonumber(ARGV[1])
while now_ms() < deadline do end
"""


@contextmanager
def busy(url: str, hold_s: float) -> Iterator[None]:
    """A script runs `hold_s` on its own connection: every other client waits,
    then, past busy-reply-threshold, gets BUSY. The block begins once the
    script holds the server (a PING is not answered at once) and ends once it is done."""
    hold_ms = round(hold_s * 1000)
    with _client(url) as client:
        client.script_load(_HOLD_SERVER)
    holder = threading.Thread(target=_hold, args=(url, hold_ms))
    holder.start()
    try:
        with redis_sync.Redis.from_url(url, socket_timeout=0.2) as probe:
            deadline_s = time.monotonic() + 2
            while time.monotonic() < deadline_s:
                try:
                    probe.ping()
                except (redis_sync.TimeoutError, redis_sync.ResponseError):
                    break  # no answer in time, or BUSY: the script holds the server
                time.sleep(0.01)
        yield
    finally:
        holder.join()


def _hold(url: str, hold_ms: int) -> None:
    with redis_sync.Redis.from_url(url, socket_timeout=hold_ms / 1000 + 5) as client:
        client.eval(_HOLD_SERVER, 0, hold_ms)
