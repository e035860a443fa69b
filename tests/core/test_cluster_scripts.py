"""Every script of core's `lua/` on a real Redis Cluster (3 primaries, 3
replicas), run as the store runs it (tests/support/every_script.py), with
Redis 7's `#!lua` flags on: a script that touched a key of another slot
than its declared keys' would be refused ("Script attempted to access keys
that do not hash to the same slot"), and one whose keys spanned slots would
not be sent at all.

Each script is loaded on the primaries (SCRIPT LOAD, on its first NOSCRIPT)
by its first run, the per-job functions' library (FUNCTION LOAD) by the
first call of one of them; the test ends by checking that every script of
the loader was, so a new script cannot go untested here."""

import hashlib
from importlib.resources import files
from typing import cast

import pytest
from arq.connections import ArqRedis

from conveyor_core.cluster import ClusterClient
from conveyor_core.lua import JOB_FUNCTIONS, job_library, lua_script
from tests.support.every_script import exercise

pytestmark = pytest.mark.xdist_group("cluster")


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _every_script() -> dict[str, str]:
    """Each script the loader knows, by sha1; not those the store runs as
    functions (JOB_FUNCTIONS: `_job_library_loaded`)."""
    functions = {script for _, script, _ in JOB_FUNCTIONS}
    names = sorted(
        p.name[:-4]
        for p in files("conveyor_core").joinpath("lua").iterdir()
        if p.name.endswith(".lua") and p.name[:-4] not in functions
    )
    return {name: _sha(lua_script(name)) for name in names}


async def _job_library_loaded(cluster: ClusterClient) -> bool:
    """The per-job functions' library, on every primary."""
    code, _ = job_library()
    name = code.partition("\n")[0].removeprefix("#!lua name=")
    listed = await cluster.execute_command(
        "FUNCTION", "LIST", "LIBRARYNAME", name, target_nodes=cluster.get_primaries()
    )
    return len(cluster.get_primaries()) == len(listed) and all(listed.values())


async def _loaded(cluster: ClusterClient, sha: str) -> bool:
    """On every primary (a cluster client asks each and answers for all)."""
    (found,) = await cluster.script_exists(sha)
    return bool(found)


async def test_every_script_runs_on_a_cluster_with_its_keys_in_one_slot(
    cluster_redis: ClusterClient,
) -> None:
    await cluster_redis.script_flush()  # on every primary
    await cluster_redis.function_flush()  # type: ignore[misc]  # the per-job functions' library
    # The store is typed for a single node's client; on a cluster it takes the
    # cluster client, which carries what it reads from one (cluster.py).
    await exercise(cast(ArqRedis, cluster_redis))

    missing = [
        name for name, sha in _every_script().items() if not await _loaded(cluster_redis, sha)
    ]
    assert missing == [], "scripts this test did not run on the cluster"
    assert await _job_library_loaded(cluster_redis)
