"""The cluster client, against a real Redis Cluster of 3 primaries and 3 replicas."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException

from conveyor_core.cluster import ClusterClient
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisFault, connect, create_redis, redis_fault
from conveyor_core.settings import RedisSettings
from tests.support.cluster import (
    ClusterNodeProcess,
    LocalCluster,
    Security,
    free_cluster_port,
    local_cluster,
    lone_cluster_node,
)
from tests.support.secure_redis import make_certificates

# Keys whose slots lie on each of the three primaries (0-5460, 5461-10922, 10923-16383).
KEYS = ["conveyor:{a}", "conveyor:{b}", "conveyor:{c}"]
# How long a failover may take to reach the client (node timeout, election, map refresh).
RECOVERY_S = 20.0


def _slot_owners(cluster: LocalCluster, keys: list[str]) -> set[int]:
    return {cluster.primary_of(key).port for key in keys}


async def test_a_cluster_url_gives_a_cluster_client_that_spans_every_primary(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    assert len(_slot_owners(redis_cluster, KEYS)) == 3, "the keys span all three primaries"
    for key in KEYS:
        await cluster_redis.set(key, key)
    assert [await cluster_redis.get(key) for key in KEYS] == [key.encode() for key in KEYS]
    # Each write is on its slot's primary, one key per primary.
    for key in KEYS:
        with redis_cluster.primary_of(key).client() as direct:
            assert direct.get(key) == key.encode()
            assert direct.dbsize() == 1


async def test_a_pipeline_spans_slots_when_it_is_no_transaction(
    cluster_redis: ClusterClient,
) -> None:
    async with cluster_redis.pipeline(transaction=False) as pipe:
        for key in KEYS:
            pipe.incr(key)
            pipe.incr(key)
        replies = await pipe.execute()
    assert replies == [1, 2] * 3
    with pytest.raises(RedisClusterException, match="transaction"):
        cluster_redis.pipeline(transaction=True)


async def test_a_function_call_goes_to_its_keys_slot_without_asking_a_node_for_them(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    library = (
        "#!lua name=slots\nredis.register_function('echo_key', function(keys) return keys[1] end)"
    )
    await cluster_redis.function_load(library, replace=True)  # type: ignore[misc]
    before = {n.port: _getkeys_calls(n) for n in redis_cluster.primaries()}

    for key in KEYS:
        assert await cluster_redis.fcall("echo_key", 1, key) == key.encode()  # type: ignore[arg-type, misc]

    # redis-py would ask a node for an FCALL's keys (COMMAND GETKEYS) before each call.
    assert {n.port: _getkeys_calls(n) for n in redis_cluster.primaries()} == before
    with pytest.raises(RedisClusterException, match="same key slot"):
        await cluster_redis.fcall("echo_key", 2, KEYS[0], KEYS[1])  # type: ignore[arg-type, misc]


def _getkeys_calls(node: ClusterNodeProcess) -> int:
    with node.client() as direct:
        stats: dict[str, dict[str, int]] = direct.info("commandstats")
    return int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))


async def test_a_script_loads_itself_on_each_node_it_runs_on(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    script = cluster_redis.register_script("return redis.call('incr', KEYS[1])")
    for node in redis_cluster.primaries():
        with node.client() as direct:
            direct.script_flush()
    assert [await script(keys=[key]) for key in KEYS] == [1, 1, 1]
    for node in redis_cluster.primaries():
        with node.client() as direct:
            assert direct.script_exists(script.sha) == [True]


async def test_a_node_keeps_its_connections_across_reads_of_the_slot_map(
    cluster_redis: ClusterClient,
) -> None:
    """A read of the slot map (after a NOSCRIPT, a failover, a timeout) keeps
    each node's client: a call that picked its node before the read and
    connects after it uses a connection the client still closes at the end,
    not one on a node it no longer knows (open until the garbage collector
    finds it)."""
    key = KEYS[0]
    await cluster_redis.set(key, "x")
    node = cluster_redis.get_node_from_key(key)
    assert node is not None
    await cluster_redis.nodes_manager.initialize()
    assert cluster_redis.get_node_from_key(key) is node
    assert node in cluster_redis.nodes_manager.startup_nodes.values()
    assert await node.execute_command("GET", key) == b"x"  # as a call under way would
    await cluster_redis.aclose()
    assert node._connections, "the call had a connection"
    assert not any(connection.is_connected for connection in node._connections)


async def test_a_client_closed_by_a_failed_call_still_closes_what_connected_since(
    cluster_redis: ClusterClient,
) -> None:
    """redis-py's own close after a failed call makes its `aclose` close
    nothing; a call under way meanwhile may have connected."""
    key = KEYS[0]
    await cluster_redis.set(key, "x")
    node = cluster_redis.get_node_from_key(key)
    assert node is not None
    await RedisCluster.aclose(cluster_redis)  # what a failed call does
    assert await node.execute_command("GET", key) == b"x"  # a call that had its node
    await cluster_redis.aclose()
    assert not any(connection.is_connected for connection in node._connections)


async def test_any_seed_that_answers_finds_the_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.restore()
    dead = f"127.0.0.1:{free_cluster_port()}"
    live = redis_cluster.nodes[-1].port  # a replica is a seed too
    client = connect(RedisSettings(url=f"redis+cluster://{dead},127.0.0.1:{live}"))
    try:
        assert isinstance(client, ClusterClient)
        for key in KEYS:
            await client.set(key, "found")
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()


async def test_no_seed_answering_is_unreachable() -> None:
    url = f"redis+cluster://127.0.0.1:{free_cluster_port()},127.0.0.1:{free_cluster_port()}"
    client = connect(RedisSettings(url=url))
    try:
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:
            await client.get("conveyor:x")
        assert redis_fault(caught.value) is RedisFault.UNREACHABLE
        assert isinstance(client, ClusterClient)
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:  # a forced re-read too
            await client.reread_slot_map()
        assert redis_fault(caught.value) is RedisFault.UNREACHABLE
    finally:
        await client.aclose()


@pytest.fixture
def lone_node(tmp_path: Path) -> Iterator[ClusterNodeProcess]:
    with lone_cluster_node(tmp_path) as node:
        yield node


async def test_a_cluster_with_unserved_slots_is_a_cluster_fault(
    lone_node: ClusterNodeProcess,
) -> None:
    # A cluster client sees slots no node serves while reading the map.
    client = connect(RedisSettings(url=f"redis+cluster://127.0.0.1:{lone_node.port}"))
    try:
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:
            await client.get("conveyor:x")
        assert isinstance(caught.value, ClusterDownError)
        assert redis_fault(caught.value) is RedisFault.CLUSTER_DOWN
        assert isinstance(client, ClusterClient)
        with pytest.raises(ClusterDownError):  # a forced re-read too (a script's NOSCRIPT)
            await client.reread_slot_map()
    finally:
        await client.aclose()
    # A plain client gets Redis' own CLUSTERDOWN reply.
    plain = create_redis(RedisSettings(url=f"redis://127.0.0.1:{lone_node.port}/0"))
    try:
        with pytest.raises(redis_sync.ResponseError) as reply:
            await plain.set("conveyor:x", "1")
        assert str(reply.value).startswith("CLUSTERDOWN")
        assert redis_fault(reply.value) is RedisFault.CLUSTER_DOWN
    finally:
        await plain.aclose()


async def test_a_single_node_client_refuses_a_cluster_url() -> None:
    with pytest.raises(ValueError, match="names a Redis Cluster"):
        create_redis(RedisSettings(url="redis+cluster://127.0.0.1:7000"))


async def _until_it_works(client: ClusterClient, key: str) -> list[RedisFault | None]:
    """SET `key` until it succeeds; the faults met on the way."""
    faults: list[RedisFault | None] = []
    deadline = time.monotonic() + RECOVERY_S
    while True:
        try:
            await client.set(key, "after")
            return faults
        except REDIS_FAULT_ERRORS as exc:
            faults.append(redis_fault(exc))
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_the_client_follows_a_failover_without_a_restart(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    key = KEYS[1]
    script = cluster_redis.register_script("return redis.call('get', KEYS[1])")
    await cluster_redis.set(key, "before")
    assert await script(keys=[key]) == b"before"
    old = redis_cluster.primary_of(key)
    new = redis_cluster.kill_primary(old)

    faults = await _until_it_works(cluster_redis, key)
    # Whatever failed on the way was a fault (a 503), never a bug (a 500).
    assert None not in faults
    assert cluster_redis.get_node_from_key(key).port == new.port  # type: ignore[union-attr]
    # The promoted replica had no scripts cached: the script loads itself there.
    assert await script(keys=[key]) == b"after"
    # Every other slot kept working.
    for other in (KEYS[0], KEYS[2]):
        await cluster_redis.set(other, "still")


async def test_the_client_comes_back_after_the_whole_cluster_was_down(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    await cluster_redis.set(KEYS[0], "before")
    for node in redis_cluster.nodes:
        node.stop()
    # Each failing call forgets the node it tried: with every node tried, none is left to ask.
    for _ in range(2 * len(redis_cluster.nodes)):
        for key in KEYS:
            with pytest.raises(REDIS_FAULT_ERRORS) as caught:
                await cluster_redis.get(key)
            assert redis_fault(caught.value) is RedisFault.UNREACHABLE
    redis_cluster.restore()
    assert await _until_it_works(cluster_redis, KEYS[0]) is not None
    assert await cluster_redis.get(KEYS[0]) == b"after"


@pytest.fixture
def secure_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three primaries (no replicas: enough here) speaking TLS only, with a password."""
    security = Security(
        password="cluster-s3cret", certificates=make_certificates(tmp_path, client_too=True)
    )
    with local_cluster(replicas_per_primary=0, security=security) as cluster:
        yield cluster


async def test_a_cluster_over_tls_with_an_acl_user(secure_cluster: LocalCluster) -> None:
    # ACL users are each node's own: the operator makes one on every node.
    for node in secure_cluster.nodes:
        with node.client() as direct:
            direct.acl_setuser(
                "conveyor", enabled=True, passwords=["+app-s3cret"], keys=["*"], commands=["+@all"]
            )
    assert secure_cluster.security is not None
    url = secure_cluster.seed_url.replace("://", "://conveyor@", 1)
    settings = RedisSettings(
        url=url,
        password=SecretStr("app-s3cret"),
        tls_ca_file=str(secure_cluster.security.certificates.ca_file),
    )
    client = connect(settings)
    try:
        for key in KEYS:
            await client.set(key, "over tls")
        assert [await client.get(key) for key in KEYS] == [b"over tls"] * 3
        # Every primary knows the client as the ACL user the URL names.
        whoami = await client.execute_command("ACL", "WHOAMI", target_nodes="primaries")
        assert set(whoami.values()) == {b"conveyor"}
    finally:
        await client.aclose()
    wrong = connect(settings.model_copy(update={"password": SecretStr("wrong")}))
    try:
        with pytest.raises(redis_sync.AuthenticationError):
            await wrong.get(KEYS[0])
    finally:
        await wrong.aclose()


async def test_a_timeout_is_not_retried(redis_cluster: LocalCluster, cluster_url: str) -> None:
    """A node that hangs gets each command once, as on one node: a retried
    timeout would double the time to a 503. Redis runs what reached it when it
    wakes, so it counts what was sent."""
    key = KEYS[0]
    primary = redis_cluster.primary_of(key)
    settings = RedisSettings(url=cluster_url, socket_timeout_s=0.2)
    command, pipelined = connect(settings), connect(settings)
    try:
        for client in (command, pipelined):
            await client.get(key)  # the slot map, read before the node hangs
        with primary.client() as direct:
            direct.config_resetstat()
        hang = asyncio.create_task(asyncio.to_thread(primary.hang, 1.0))
        await asyncio.to_thread(_until_silent, primary)
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:
            await command.incr(key)
        assert redis_fault(caught.value) is RedisFault.TIMED_OUT
        pipe = pipelined.pipeline(transaction=False)
        pipe.incr(key)
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:
            await pipe.execute()
        assert redis_fault(caught.value) is RedisFault.TIMED_OUT
        await hang
        with primary.client() as direct:
            assert direct.get(key) == b"2"
    finally:
        await command.aclose()
        await pipelined.aclose()


def _until_silent(node: ClusterNodeProcess) -> None:
    """Return once `node` no longer answers a PING in time (its hang has begun)."""
    while True:
        try:
            with node.client(socket_timeout=0.05) as direct:
                direct.ping()
        except redis_sync.TimeoutError:
            return


async def test_a_pipeline_survives_a_close_by_another_call(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    # During a failover one call's retry closes the shared client (redis-py then
    # has no default node until it reads the slot map again) while another's
    # pipeline waits on its node: its failed command is its result, not a crash.
    key = "conveyor:{a}:count"
    await cluster_redis.incr(key)
    with redis_cluster.primary_of(key).client() as direct:
        sleeping = asyncio.create_task(
            asyncio.to_thread(direct.execute_command, "DEBUG", "SLEEP", "0.5")
        )
        await asyncio.sleep(0.1)
        async with cluster_redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            executing = asyncio.create_task(pipe.execute(raise_on_error=False))
            await asyncio.sleep(0.1)
            await cluster_redis.aclose()  # as another call's retry does
            (result,) = await executing
        await sleeping
    assert isinstance(result, Exception)
    assert await cluster_redis.incr(key) >= 2  # and it serves on
