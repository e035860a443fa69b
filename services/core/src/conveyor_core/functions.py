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
"""

from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT, KeyT

from conveyor_core.redis import RedisClient

NOT_FOUND = "Function not found"


class FunctionLibrary:
    """One function library (`conveyor_core.lua.library`) on one Redis (or cluster)."""

    def __init__(self, redis: RedisClient, code: str, names: dict[str, str]) -> None:
        self.redis = redis
        self.code = code
        self.names = names

    def function(self, key: str) -> "LuaFunction":
        return LuaFunction(self, self.names[key])

    async def load(self) -> None:
        # redis-py types its function commands for a sync client and an async one alike.
        await self.redis.function_load(self.code, replace=True)  # type: ignore[misc]


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
