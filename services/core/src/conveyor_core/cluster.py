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
- a close by one call (its retry) while another's pipeline is under way
  leaves no default node, which that pipeline reads after a failure: any
  known node stands in (`ClusterClient.get_default_node`);
- pipelines (`transaction=False` only) are split per node, one connection each;
- it finds an FCALL's slot by asking a node (COMMAND GETKEYS: a round trip
  and a command per call), as EVALSHA's it reads from the call itself;
  `ClusterClient` reads FCALL's too;
- a node's new connections connect side by side, with no pool lock held
  (what `redis.ParallelConnectionPool` fixes for one node is not needed);
- each read of the slot map (after a NOSCRIPT, a failover, a timeout) makes
  a new `ClusterNode` for every node and closes the old ones' connections in
  tasks no one awaits; a call that picked its node before the read and
  connects after it then leaves a connection open on a node the client no
  longer knows, closed by no one (a ResourceWarning at the next garbage
  collection). `_NodesManager` keeps one `ClusterNode` per address across
  reads, and closes the nodes that left the map with the client;
- a `Script` loads itself with SCRIPT LOAD on every primary on its first
  NOSCRIPT (a promoted replica starts with no scripts); ours reads the slot
  map again and loads once more if it still meets NOSCRIPT (a map that did
  not know the promoted replica yet); a script queued in a cluster pipeline
  is not loaded for it: call scripts directly;
- there is no pub/sub client: `conveyor_core.shardpubsub` subscribes to
  sharded channels (SSUBSCRIBE) on the node that owns each one.
"""

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from arq.constants import default_queue_name, expires_extra_ms
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, NodesManager, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT, KeyT, ScriptTextT

from conveyor_core.serializer import job_deserializer, job_serializer

# Calls that declare their keys as EVALSHA does: name, number of keys, keys, args.
_FUNCTION_CALLS = frozenset({"FCALL", "FCALL_RO"})

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
        self.nodes_manager = _NodesManager.taking_over(self.nodes_manager)
        # What arq's client code reads from a connection, as ArqRedis has it
        # (job data is JSON, never pickle: serializer.py).
        self.job_serializer = job_serializer
        self.job_deserializer = job_deserializer
        self.default_queue_name = default_queue_name
        self.expires_extra_ms = expires_extra_ms

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        """redis-py's pipeline (no transaction), retried on the same errors as a command."""
        super().pipeline(transaction, shard_hint)  # refuses a transaction, a shard hint
        return _Pipeline(self)  # type: ignore[abstract]

    async def aclose(self) -> None:
        """Close every connection to every node this client ever used.

        redis-py closes nothing when a failed call closed the client already
        (it reads the slot map again on the next call): a call under way
        then may have connected since.
        """
        await super().aclose()
        assert isinstance(self.nodes_manager, _NodesManager)
        await self.nodes_manager.disconnect_all()

    def get_default_node(self) -> ClusterNode:
        """The node for calls with no key; any known node while there is none.

        A close (redis-py's own retry after a failed call closes the shared
        client, as `replicas.py` does after a redirect) leaves no default node
        until the slot map is read again, and redis-py's pipeline reads one
        after a failure: a pipeline under way then would crash (a 500 during a
        failover) instead of returning its commands' faults.
        """
        node = super().get_default_node()
        if node is None and self.nodes_manager.nodes_cache:
            return self.get_random_node()
        return node

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        """A script run by EVALSHA on its keys' node, loaded on every primary on a NOSCRIPT.

        redis-py's own is typed for a single node's client only.
        """
        return _Script(self, script)  # type: ignore[arg-type]

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of an FCALL's keys, read from the call (redis-py asks a node)."""
        if command.upper() not in _FUNCTION_CALLS or len(args) < 2 or not int(args[1]):
            return await super()._determine_slot(command, *args)
        slots = {self.keyslot(key) for key in args[2 : 2 + int(args[1])]}
        if len(slots) != 1:
            raise RedisClusterException(f"{command} - all keys must map to the same key slot")
        return slots.pop()

    async def initialize(self) -> "ClusterClient":
        """Read the slot map, if not read yet; a fault while reading it raises
        as the fault it is (`_slot_map_faults`)."""
        with _slot_map_faults():
            await super().initialize()
        return self

    async def reread_slot_map(self) -> None:
        """Read the slot map again now: a node was lost, or a promoted replica
        lacks a script. Faults raise as `initialize`'s do."""
        with _slot_map_faults():
            await self.nodes_manager.initialize()


@contextlib.contextmanager
def _slot_map_faults() -> Iterator[None]:
    """redis-py raises a bare RedisClusterException when no seed answers or
    slots are unserved while it reads the slot map: its callers would take
    either for a bug (a 500 during a failover). Here each is the fault it is."""
    try:
        yield
    except RedisClusterException as exc:
        message = str(exc)
        if isinstance(exc.__cause__, AuthenticationError):  # as one node says it
            raise exc.__cause__ from exc
        if message.startswith(_NO_SEED_ANSWERS):
            raise RedisConnectionError(message) from exc
        if message.startswith(_SLOTS_UNSERVED):
            raise ClusterDownError(message) from exc  # type: ignore[no-untyped-call]
        raise


class _NodesManager(NodesManager):
    """redis-py's slot map, keeping one `ClusterNode` per address across reads.

    redis-py makes a new node for every address at each read and closes the
    old one's connections in a task no one awaits; a call holding the old node
    (it picked it before the read) connects again afterwards, on a node no
    one will close. Here a node that stays in the map stays the same object,
    with its connections; one that leaves it is closed now and again when the
    client closes (a call may still have been using it).
    """

    __slots__ = ("_closing", "_retired")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retired: list[ClusterNode] = []  # left the map; closed again at the end
        self._closing: set[asyncio.Task[None]] = set()  # their first close, under way

    @classmethod
    def taking_over(cls, manager: NodesManager) -> "_NodesManager":
        """This class in place of redis-py's `manager` (before any use)."""
        return cls(
            list(manager.startup_nodes.values()),
            manager.require_full_coverage,
            manager.connection_kwargs,
            address_remap=manager.address_remap,
            event_dispatcher=manager._event_dispatcher,
        )

    def set_nodes(
        self,
        old: dict[str, ClusterNode],
        new: dict[str, ClusterNode],
        remove_old: bool = False,
    ) -> None:
        """Update `old` (the map's or the seeds' nodes) to `new`'s addresses,
        keeping the node `old` has for each address it keeps."""
        kept: dict[int, ClusterNode] = {}  # id of a node just made -> the known one
        for name, node in new.items():
            known = old.get(name)
            if known is not None and known is not node:
                known.server_type = node.server_type  # a replica promoted, say
                kept[id(node)] = known
        for known in kept.values():
            new[known.name] = known
        if remove_old:
            for name in [name for name in old if name not in new]:
                self._retire(old.pop(name))
        old.update(new)
        if kept:
            self._point_slots_at(kept)

    def _point_slots_at(self, kept: dict[int, ClusterNode]) -> None:
        """The slot map names the known nodes instead of those just made.

        A range's slots share one list: each list is rewritten once.
        """
        rewritten: set[int] = set()
        for nodes in self.slots_cache.values():
            if id(nodes) not in rewritten:
                rewritten.add(id(nodes))
                nodes[:] = [kept.get(id(node), node) for node in nodes]

    def _retire(self, node: ClusterNode) -> None:
        """`node` left the map: close its connections now, and again at the end."""
        self._retired.append(node)
        task = asyncio.get_running_loop().create_task(_disconnect(node))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def disconnect_all(self) -> None:
        """Close the connections of every node, those that left the map too."""
        nodes = {
            id(node): node
            for node in (*self.nodes_cache.values(), *self.startup_nodes.values(), *self._retired)
        }
        self._retired.clear()
        await asyncio.gather(*(_disconnect(node) for node in nodes.values()))


async def _disconnect(node: ClusterNode) -> None:
    """Close `node`'s connections; one that fails to close is gone anyway."""
    with contextlib.suppress(RedisError, OSError):
        await node.disconnect()


class _Script(AsyncScript):
    """redis-py's script, which after a NOSCRIPT loads itself on the primaries
    its slot map knows and runs again. Right after a failover that map may not
    know the promoted replica as a primary yet, so the second run meets
    NOSCRIPT too: then the map is read again and the script loaded once more."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> Any:
        try:
            return await super().__call__(keys, args, client)
        except NoScriptError:
            cluster = client if client is not None else self.registered_client
            if not isinstance(cluster, ClusterClient):
                raise
            await cluster.reread_slot_map()
            self.sha = await cluster.script_load(self.script)
            named = list(keys or [])
            # redis-py types EVALSHA's keys and arguments as str only.
            return await cluster.evalsha(self.sha, len(named), *named, *(args or []))  # type: ignore[arg-type,misc]


class _Pipeline(ClusterPipeline):
    # redis-py retries a pipeline on a timeout too: not ours (see ClusterClient).
    ERRORS_ALLOW_RETRY = ClusterClient.ERRORS_ALLOW_RETRY  # type: ignore[assignment]


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
