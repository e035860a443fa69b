"""The Redis Cluster client: a cluster found from any of its seed nodes.

How a cluster client fits a codebase typed for arq's `ArqRedis`:
`ClusterClient` is redis-py's asyncio `RedisCluster` carrying the few things
Conveyor reads from an `ArqRedis` (`job_serializer`, `job_deserializer`,
`default_queue_name`, `expires_extra_ms`), and none of arq's own client
methods (`enqueue_job`, `queued_jobs`, ...): those run MULTI over keys of
many slots, which no cluster accepts. `conveyor_core.redis.RedisClient`
(`ArqRedis | ClusterClient`) is the type of code meant to run on both, and
`conveyor_core.redis.connect(settings)` builds the one REDIS_URL names. Code
typed `ArqRedis` keeps working on a single node.

What redis-py does for us, and what it does not:

- it reads the slot map from the first seed that answers, follows MOVED
  (patching its map, re-reading it every few) and ASK, and after a refused
  connection or CLUSTERDOWN reads the map again and retries: after a
  failover, calls reach the promoted replica without a restart;
- commands whose keys span slots raise before anything is sent;
- pipelines (`transaction=False` only) are split per node, one connection each;
- a `Script` loads itself with SCRIPT LOAD on every primary on its first
  NOSCRIPT (a promoted replica starts with no scripts), but a script queued
  in a cluster pipeline is not loaded for it: call scripts directly;
- there is no pub/sub client: `conveyor_core.shardpubsub` subscribes to
  sharded channels (SSUBSCRIBE) on the node that owns each one.
"""

from typing import Any

from arq.constants import default_queue_name, expires_extra_ms
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import ScriptTextT

from conveyor_core.serializer import job_deserializer, job_serializer

# Messages redis-py gives a RedisClusterException while reading the slot map.
_NO_SEED_ANSWERS = "Redis Cluster cannot be connected"
_SLOTS_UNSERVED = ("All slots are not covered", "startup_nodes could not agree")


class ClusterClient(RedisCluster):
    """redis-py's cluster client, with an `ArqRedis`'s serializers and fault names."""

    # Retried after reading the slot map again: a refused connection (a dead
    # primary) or a cluster that says it is down. A timeout is not retried,
    # as on a single node, so a hanging node costs one socket timeout.
    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]
        RedisConnectionError,
        ClusterDownError,
        MasterDownError,
        SlotNotCoveredError,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What arq's client code reads from a connection, as ArqRedis has it
        # (job data is JSON, never pickle: serializer.py).
        self.job_serializer = job_serializer
        self.job_deserializer = job_deserializer
        self.default_queue_name = default_queue_name
        self.expires_extra_ms = expires_extra_ms

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        """A script run by EVALSHA on its keys' node, loaded on every primary on a NOSCRIPT.

        redis-py's own is typed for a single node's client only.
        """
        return AsyncScript(self, script)  # type: ignore[arg-type]

    async def initialize(self) -> "ClusterClient":
        """Read the slot map; a fault while reading it raises as the fault it is.

        redis-py raises a bare RedisClusterException when no seed answers or
        slots are unserved: its callers would take either for a bug.
        """
        try:
            await super().initialize()
        except RedisClusterException as exc:
            message = str(exc)
            if message.startswith(_NO_SEED_ANSWERS):
                raise RedisConnectionError(message) from exc
            if message.startswith(_SLOTS_UNSERVED):
                raise ClusterDownError(message) from exc  # type: ignore[no-untyped-call]
            raise
        return self


def create_cluster(seeds: list[tuple[str, int]], **options: Any) -> ClusterClient:
    """A client of the cluster `seeds` belong to; it connects on first use."""
    # redis-py's types declare a `connection_pool` no cluster client has.
    return ClusterClient(  # type: ignore[abstract]
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        # A slot map with a slot no node serves is not taken: CLUSTERDOWN
        # until it is whole (as Redis' own cluster-require-full-coverage).
        require_full_coverage=True,
        **options,
    )
