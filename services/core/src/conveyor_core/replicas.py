"""A write that waits until replicas hold it (Redis WAIT).

Redis replicates asynchronously: a primary that dies right after it
acknowledged a write may take the write with it, and its promoted replica
never saw it. WAIT narrows that window: it returns once N replicas have
acknowledged every write made *on the same connection* before it, or when
its timeout passes (then with how many did).

WAIT counts only its own connection's writes: sent on another connection of
the pool, it returns at once and proves nothing. So the call (a script's
EVALSHA or a function's FCALL) and its WAIT go in one pipeline, which
redis-py sends on one connection to the node that serves the key (on a
cluster: the primary of the key's slot). If the slot moved meanwhile (a
MOVED, a failover), the WAIT went elsewhere and its count is not trusted:
the result says 0 replicas; so it does when the WAIT itself failed after
the write (its primary demoted while it waited, a dropped connection).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import AskError, NoScriptError, ResponseError

from conveyor_core.cluster import ClusterClient
from conveyor_core.functions import NOT_FOUND, LuaFunction
from conveyor_core.redis import RedisClient

# Times a script is tried again after NOSCRIPT or a redirect (neither ran it).
RETRIES = 2


@dataclass(frozen=True, slots=True)
class Replicated:
    """A script's reply, and how many replicas held its write when it returned."""

    reply: Any
    wanted: int  # the replicas asked for (REDIS_WAIT_REPLICAS)
    acknowledged: int  # those that had it within the timeout (may exceed `wanted`)

    @property
    def short(self) -> bool:
        """Fewer replicas than asked hold the write: a failover now may lose it."""
        return self.acknowledged < self.wanted


class ReplicasShortError(Exception):
    """A job was written, but fewer replicas than asked acknowledged it in
    time: a failover now may lose it. The job itself stands (it is not undone)."""

    def __init__(self, job_id: str, wanted: int, acknowledged: int) -> None:
        super().__init__(
            f"job {job_id}: {acknowledged} of {wanted} replica(s) acknowledged it in time"
        )
        self.job_id = job_id
        self.wanted = wanted
        self.acknowledged = acknowledged


async def call_and_wait(
    client: RedisClient,
    script: AsyncScript | LuaFunction,
    *,
    keys: Sequence[str],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> Replicated:
    """Run `script` (a script or a function) on `keys` (one slot), then WAIT
    for `replicas` replicas on the same connection.

    With `replicas` 0 the call runs as usual and nothing waits.
    """
    if replicas <= 0:
        if isinstance(script, LuaFunction):
            return Replicated(await script(keys=keys, args=args), 0, 0)
        # redis-py types a script's client as a single node's; a cluster's works too.
        return Replicated(await script(keys=keys, args=args, client=client), 0, 0)  # type: ignore[arg-type]
    for attempt in range(RETRIES + 1):
        node = None
        if isinstance(client, ClusterClient):
            await client.initialize()  # the slot map, if not read yet
            node = client.get_node_from_key(keys[0])
        async with client.pipeline(transaction=False) as pipe:
            # Both to one node, so on one connection (a cluster pipeline
            # refuses `evalsha` by name, not the command itself).
            on_node = {} if node is None else {"target_nodes": node}
            if isinstance(script, LuaFunction):
                pipe.execute_command("FCALL", script.name, len(keys), *keys, *args, **on_node)
            else:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **on_node)
            pipe.execute_command("WAIT", replicas, timeout_ms, **on_node)
            reply, acknowledged = await _execute(pipe, client)
        if attempt < RETRIES and isinstance(reply, ResponseError) and _not_run(reply, script):
            # Not run: load it (on every primary of a cluster) or let the slot map refresh.
            if isinstance(reply, AskError):
                if isinstance(client, ClusterClient):
                    await client.aclose()  # re-read the slot map on the next call
            elif isinstance(script, LuaFunction):
                await script.library.load()
            else:
                script.sha = await client.script_load(script.script)
            continue
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acknowledged, Exception):
            # The write ran, its WAIT did not end well: the primary turned
            # replica meanwhile (UNBLOCKED, "WAIT cannot be used with replica
            # instances"), or the connection dropped. No replica vouched for it.
            return Replicated(reply, replicas, 0)
        moved = isinstance(client, ClusterClient) and client.get_node_from_key(keys[0]) != node
        return Replicated(reply, replicas, 0 if moved else int(acknowledged))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _not_run(reply: ResponseError, script: AsyncScript | LuaFunction) -> bool:
    """Did the call not run: a redirect, or Redis lacked the script or function?"""
    if isinstance(reply, AskError | NoScriptError):
        return True
    return isinstance(script, LuaFunction) and NOT_FOUND in str(reply)


async def _execute(pipe: Any, client: RedisClient) -> list[Any]:
    """The pipeline's replies, errors as values; on a cluster, no redirect is followed
    (a redirected script would run on another connection than its WAIT)."""
    if isinstance(client, ClusterClient):
        replies: list[Any] = await pipe.execute(raise_on_error=False, allow_redirections=False)
    else:
        replies = await pipe.execute(raise_on_error=False)
    return replies
