"""Core's per-job scripts run as Redis functions (FCALL), not as scripts.

A script's text runs whole on every EVALSHA: each call defines again every
library function it includes (dozens of closures for the end of a try, which
also claims) before its body runs. A function library's top level runs once,
when Redis loads it, so a call runs the body alone (docs/development.md).

The library loads itself as a script does: on a function's first "Function
not found" (a first call, a Redis that restarted with no persistence, a
FUNCTION FLUSH), FUNCTION LOAD puts it in (on a cluster: on every primary;
replicas get it with the data) and the call runs again. FCALL takes its keys
as EVALSHA does, so a cluster routes it to their slot.

A library's name carries a digest of its text, so each version loads its
own and an upgrade leaves the old one in Redis. Each process records its
library's name and when it last used it (keys.FUNCTION_LIBRARIES_SEEN): on
load, and from the worker's heartbeat at most every SEEN_EVERY_S. A worker's
housekeeping deletes our libraries no process has used for longer than its
setting (`delete_unused_libraries`). Deleting one still in use costs that
process a reload on its next call ("Function not found"), which records it
as used again: no back and forth during a rolling upgrade.
"""

import contextlib
import re
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ResponseError
from redis.typing import EncodableT, KeyT

from conveyor_core import keys
from conveyor_core.cluster import ClusterClient
from conveyor_core.redis import RedisClient

NOT_FOUND = "Function not found"
# A process says it still uses its library at most this often.
SEEN_EVERY_S = 300.0
# Our libraries' names (lua.library): no one else's is ever deleted.
OUR_LIBRARY = re.compile(r"conveyor_[0-9a-f]{16}")
_LIBRARY_NAME = re.compile(r"#!lua name=(\S+)")


def _now_ms() -> int:
    return int(time.time() * 1000)


class FunctionLibrary:
    """One function library (`conveyor_core.lua.library`) on one Redis (or cluster)."""

    def __init__(self, redis: RedisClient, code: str, names: dict[str, str]) -> None:
        self.redis = redis
        self.code = code
        self.names = names
        found = _LIBRARY_NAME.match(code)
        if found is None:
            raise ValueError("a function library starts with its `#!lua name=...` line")
        self.name = found[1]
        self._seen_s: float | None = None  # when this process last recorded it (monotonic)

    def function(self, key: str) -> "LuaFunction":
        return LuaFunction(self, self.names[key])

    async def load(self) -> None:
        # redis-py types its function commands for a sync client and an async one alike.
        await self.redis.function_load(self.code, replace=True)  # type: ignore[misc]
        self._seen_s = None
        await self.still_used()

    async def still_used(self) -> None:
        """Record that this process uses the library, at most every SEEN_EVERY_S."""
        now_s = time.monotonic()
        if self._seen_s is not None and now_s - self._seen_s < SEEN_EVERY_S:
            return
        self._seen_s = now_s
        # Best effort: a full Redis (OOM) refuses the record, not the call.
        with contextlib.suppress(ResponseError):
            await self.redis.hset(keys.FUNCTION_LIBRARIES_SEEN, self.name, str(_now_ms()))  # type: ignore[misc]


class LuaFunction:
    """A function of a library, called as a registered script is:
    `await f(keys=[...], args=[...])`."""

    def __init__(self, library: FunctionLibrary, name: str) -> None:
        self.library = library
        self.name = name

    async def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[EncodableT] = ()) -> Any:
        try:
            return await self._call(keys, args)
        except ResponseError as exc:
            if NOT_FOUND not in str(exc):
                raise
        await self.library.load()
        return await self._call(keys, args)

    async def _call(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        redis = self.library.redis
        return await redis.fcall(self.name, len(keys), *keys, *args)  # type: ignore[arg-type, misc]


async def delete_unused_libraries(
    redis: RedisClient, current: str, max_unseen_s: float
) -> list[str]:
    """Delete our libraries no process has said it uses for `max_unseen_s`
    (on a cluster, from every primary that has one); never `current`, nor
    anyone else's. The names deleted.

    A library no process ever recorded (one of a version before the record
    existed) is recorded as seen now: it goes once it stays unused as long.
    """
    now = _now_ms()
    raw = await redis.hgetall(keys.FUNCTION_LIBRARIES_SEEN)  # type: ignore[misc]
    seen = {field.decode(): int(value) for field, value in raw.items()}
    deleted: list[str] = []
    for node, names in await our_libraries(redis):
        for name in sorted(names - {current}):
            if name not in seen:
                await redis.hsetnx(keys.FUNCTION_LIBRARIES_SEEN, name, str(now))  # type: ignore[misc]
                seen[name] = now
            elif now - seen[name] > max_unseen_s * 1000:
                on_node = {} if node is None else {"target_nodes": node}
                await redis.execute_command("FUNCTION", "DELETE", name, **on_node)
                deleted.append(name)
    if deleted:
        await redis.hdel(keys.FUNCTION_LIBRARIES_SEEN, *set(deleted))  # type: ignore[misc]
    return sorted(set(deleted))


async def our_libraries(redis: RedisClient) -> list[tuple[ClusterNode | None, set[str]]]:
    """Our libraries on each primary (one node: None, and its libraries)."""
    if not isinstance(redis, ClusterClient):
        reply = await redis.execute_command("FUNCTION", "LIST")  # type: ignore[no-untyped-call]
        return [(None, _library_names(reply))]
    await redis.initialize()  # the slot map, if not read yet
    listed: list[tuple[ClusterNode | None, set[str]]] = []
    for node in redis.get_primaries():
        reply = await redis.execute_command("FUNCTION", "LIST", target_nodes=node)
        listed.append((node, _library_names(reply)))
    return listed


def _library_names(reply: Any) -> set[str]:
    """Our library names in a FUNCTION LIST reply (each library a flat list of fields)."""
    names = set()
    for library in reply:
        fields = dict(zip(library[::2], library[1::2], strict=True))
        name = fields.get(b"library_name", fields.get("library_name"))
        text = name.decode() if isinstance(name, bytes) else str(name)
        if OUR_LIBRARY.fullmatch(text):
            names.add(text)
    return names
