"""The per-job scripts as Redis functions: their libraries built once, loaded again when lost."""

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ResponseError

from conveyor_core.enqueue import enqueue
from conveyor_core.functions import NOT_FOUND, FunctionLibrary
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
