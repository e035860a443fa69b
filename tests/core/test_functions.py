"""The per-job scripts as Redis functions: their libraries built once, loaded again when lost."""

import time

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ResponseError

from conveyor_core.enqueue import enqueue
from conveyor_core.functions import (
    NOT_FOUND,
    FunctionLibrary,
    delete_unused_libraries,
    our_libraries,
)
from conveyor_core.keys import FUNCTION_LIBRARIES_SEEN
from conveyor_core.lua import JOB_FUNCTIONS, job_library
from conveyor_core.store import JobStore
from conveyor_seed import CREATE_TASK, CreateTask

pytestmark = pytest.mark.xdist_group("cluster")

CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    return node_or_cluster_redis


def test_the_job_library_defines_its_libraries_once_outside_the_bodies() -> None:
    code, names = job_library()
    digest = names["claim"].rsplit("_", 1)[1]
    assert code.startswith(f"#!lua name=conveyor_{digest}\n")
    # The libraries are the library's top level (run at FUNCTION LOAD), each
    # script's text the body of a function; the end of a try's two variants
    # share one body and differ in their flags.
    assert code.count("local function claim_jobs(") == 1
    assert code.index("local function claim_jobs(") < code.index("local function run_submit(")
    assert code.count("local function run_finish(KEYS, ARGV)") == 1
    assert code.endswith(
        f"redis.register_function{{function_name = '{names['finish']}', callback = run_finish, "
        "flags = {'allow-oom'}}\n"
        f"redis.register_function{{function_name = '{names['finish_and_fetch']}', "
        "callback = run_finish, flags = {}}"
    )
    assert sorted(names) == sorted(key for key, _, _ in JOB_FUNCTIONS)


async def test_a_function_redis_lost_is_loaded_again_and_runs(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = (await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0))).job_id  # loads submit's
    # As a restart with no persistence would; on a cluster, on every primary.
    await redis.function_flush()  # type: ignore[misc]

    claim = await store.claim(CREATE_TASK.queue, 1, **CLAIM)

    assert [c.job_id for c in claim.jobs] == [job_id]
    assert await store.complete(CREATE_TASK, job_id, "1", token=claim.jobs[0].token)


async def test_a_functions_own_error_is_raised_not_taken_for_a_missing_function(
    redis: ArqRedis,
) -> None:
    claim = FunctionLibrary(redis, *job_library()).function("claim")
    with pytest.raises(ResponseError) as raised:
        await claim(keys=[CREATE_TASK.queue], args=[])  # no arguments: the body fails
    assert NOT_FOUND not in str(raised.value)


DAY_S = 86_400


def _library(name: str) -> str:
    return f"#!lua name={name}\nredis.register_function('{name}_f', function() return 1 end)"


async def _libraries(redis: ArqRedis) -> list[set[str]]:
    """Our libraries on each primary."""
    return [names for _, names in await our_libraries(redis)]


async def test_a_loaded_library_is_recorded_as_used(redis: ArqRedis) -> None:
    library = FunctionLibrary(redis, *job_library())
    before_ms = int(time.time() * 1000)
    await library.load()
    seen_ms = int(await redis.hget(FUNCTION_LIBRARIES_SEEN, library.name))  # type: ignore[misc]
    assert seen_ms >= before_ms
    assert all(library.name in names for names in await _libraries(redis))


async def test_housekeeping_deletes_only_our_libraries_unused_for_long(redis: ArqRedis) -> None:
    current = FunctionLibrary(redis, *job_library())
    await current.load()
    stale, recent, unrecorded = (f"conveyor_{c * 16}" for c in "abc")
    others = "someone_elses"
    for name in (stale, recent, unrecorded, others):
        await redis.function_load(_library(name), replace=True)  # type: ignore[misc]
    now_ms = int(time.time() * 1000)
    await redis.hset(  # type: ignore[misc]
        FUNCTION_LIBRARIES_SEEN,
        mapping={
            stale: now_ms - 2 * DAY_S * 1000,
            recent: now_ms - 3600 * 1000,
            current.name: now_ms - 2 * DAY_S * 1000,  # ours: never deleted
        },
    )
    try:
        assert await delete_unused_libraries(redis, current.name, DAY_S) == [stale]

        for names in await _libraries(redis):  # on a cluster: every primary
            assert stale not in names
            assert {current.name, recent, unrecorded} <= names
        listed = await redis.function_list()  # type: ignore[misc]
        assert others in str(listed), "not ours: kept"
        # One no process recorded starts its clock now; the deleted one's record goes.
        seen = await redis.hgetall(FUNCTION_LIBRARIES_SEEN)  # type: ignore[misc]
        assert int(seen[unrecorded.encode()]) >= now_ms
        assert stale.encode() not in seen
        # Its clock running, it is not deleted now either.
        assert await delete_unused_libraries(redis, current.name, DAY_S) == []
        # A process still using a deleted library loads it again, and says so.
        await redis.hdel(FUNCTION_LIBRARIES_SEEN, current.name)  # type: ignore[misc]
        await redis.function_delete(current.name)  # type: ignore[misc]
        assert (await JobStore(redis).claim(CREATE_TASK.queue, 1, **CLAIM)).jobs == []
        assert await redis.hexists(FUNCTION_LIBRARIES_SEEN, current.name)  # type: ignore[misc]
    finally:
        for name in (recent, unrecorded, others):
            await redis.function_delete(name)  # type: ignore[misc]
