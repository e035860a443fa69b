"""The one-time rewrite of pickled job data, against pickles arq's default serializer wrote."""

import pickle
from datetime import UTC, datetime

import pytest
import redis as redis_sync
from arq.connections import ArqRedis, RedisSettings, create_pool

from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.store import ArqJob, JobStore
from conveyor_core.upgrade_pickles import main, upgrade
from conveyor_seed import CREATE_TASK
from tests.support import jobs

QUEUE = CREATE_TASK.queue


async def _pickles(redis_url: str) -> dict[str, str]:
    """Jobs as an older release left them, by arq's own client (pickle): job id by kind."""
    arq_client = await create_pool(RedisSettings.from_dsn(redis_url))  # arq's default: pickle
    try:
        waiting = await arq_client.enqueue_job("create_task", sleep_s=0.5, _queue_name=QUEUE)
        deferred = await arq_client.enqueue_job(
            "create_task", sleep_s=1, _queue_name=QUEUE, _defer_by=3600
        )
        # JSON cannot hold a datetime: refused, left as it is.
        odd = await arq_client.enqueue_job(
            "create_task", when=datetime(2026, 1, 1, tzinfo=UTC), _queue_name=QUEUE
        )
    finally:
        await arq_client.aclose()
    assert waiting
    assert deferred
    assert odd
    # A dead job (in the dead letters, its payload kept for a requeue) and damaged data.
    dead_raw = pickle.dumps({"t": 1, "f": "create_task", "a": (), "k": {"sleep_s": 2}, "et": 1})
    await arq_client_set(redis_url, "arq:job:dead-1", dead_raw, px=60_000)
    await arq_client_set(redis_url, "arq:job:junk-1", b"\x80\x05garbage", px=None)
    async with ArqRedis.from_url(redis_url) as raw:
        await raw.zadd(keys.index_key(QUEUE, "dead"), {"dead-1": 1, "junk-1": 2})
        await raw.zadd("arq:queue:elsewhere", {"not-ours": 1})
        await raw.set("arq:job:not-ours", pickle.dumps({"f": "x", "k": {}, "et": 1}))
    return {
        "waiting": waiting.job_id,
        "deferred": deferred.job_id,
        "odd": odd.job_id,
        "dead": "dead-1",
        "junk": "junk-1",
    }


async def arq_client_set(redis_url: str, key: str, value: bytes, px: int | None) -> None:
    async with ArqRedis.from_url(redis_url) as raw:
        await raw.set(key, value, px=px)


async def test_pickles_are_rewritten_as_json_keeping_their_expiry(
    redis: ArqRedis, redis_url: str
) -> None:
    ids = await _pickles(redis_url)
    catalog = load_catalog(jobs.MODULES.split(","))
    before = {kind: await redis.get(f"arq:job:{job_id}") for kind, job_id in ids.items()}
    ttl_before = await redis.pttl(f"arq:job:{ids['deferred']}")

    dry = await upgrade(redis, catalog, dry_run=True)
    assert (dry.seen, dry.rewritten, dry.already_json) == (5, 3, 0)
    for kind, job_id in ids.items():  # a dry run writes nothing
        assert await redis.get(f"arq:job:{job_id}") == before[kind]

    done = await upgrade(redis, catalog)
    assert (done.seen, done.rewritten, done.already_json, done.changed) == (5, 3, 0, 0)
    refused = dict(done.refused)
    assert refused.keys() == {ids["odd"], ids["junk"]}
    assert "must be JSON" in refused[ids["odd"]]
    assert "does not unpickle" in refused[ids["junk"]]
    assert await redis.get(f"arq:job:{ids['odd']}") == before["odd"]
    assert done.unknown == []
    for kind in ("waiting", "deferred", "dead"):
        raw = await redis.get(f"arq:job:{ids[kind]}")
        assert raw is not None
        assert raw.startswith(b"{"), kind
        job = ArqJob.decode(raw)
        assert job is not None
        assert job.function == "create_task"
    waiting = ArqJob.decode(await redis.get(f"arq:job:{ids['waiting']}") or b"")
    assert waiting is not None
    assert waiting.payload == {"sleep_s": 0.5}
    assert abs(await redis.pttl(f"arq:job:{ids['deferred']}") - ttl_before) < 2_000
    assert await redis.pttl(f"arq:job:{ids['dead']}") > 50_000
    # Not a catalog queue's job: not touched.
    assert (await redis.get("arq:job:not-ours") or b"").startswith(b"\x80")
    # The api reads the rewritten jobs.
    record = await JobStore(redis, catalog).get(ids["waiting"])
    assert record is not None
    assert record.payload == {"sleep_s": 0.5}

    again = await upgrade(redis, catalog)
    assert (again.rewritten, again.already_json) == (0, 3)


async def test_damaged_data_is_reported_not_rewritten(redis: ArqRedis) -> None:
    await redis.set("arq:job:junk-2", b"\x80\x05garbage")
    await redis.set("arq:job:text-1", b"not json, not a pickle")
    await redis.zadd(QUEUE, {"junk-2": 1, "text-1": 2})
    done = await upgrade(redis, load_catalog(jobs.MODULES.split(",")))
    assert [job_id for job_id, _ in done.refused] == ["junk-2"]
    assert "does not unpickle" in done.refused[0][1]
    assert done.unknown == ["text-1"]
    assert await redis.get("arq:job:junk-2") == b"\x80\x05garbage"


def test_the_command_reports_and_fails_on_what_it_cannot_convert(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CONVEYOR_JOB_MODULES", jobs.MODULES)
    with redis_sync.Redis.from_url(redis_url) as raw:
        raw.set("arq:job:p-1", pickle.dumps({"t": None, "f": "noop", "a": (), "k": {}, "et": 1}))
        raw.set("arq:job:p-2", pickle.dumps({"t": None, "f": "noop", "a": (), "k": {"s": {1}}}))
        raw.zadd(QUEUE, {"p-1": 1, "p-2": 2})
    assert main(["--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "pickles to rewrite as JSON (dry run): 1" in out
    assert "p-2: not arq job data" in out
    with redis_sync.Redis.from_url(redis_url) as raw:
        assert (raw.get("arq:job:p-1") or b"").startswith(b"\x80")
    assert main([]) == 1
    assert "pickles rewritten as JSON: 1" in capsys.readouterr().out
    with redis_sync.Redis.from_url(redis_url) as raw:
        assert (raw.get("arq:job:p-1") or b"").startswith(b"{")
        raw.delete("arq:job:p-2")
    assert main([]) == 0
    assert "already JSON: 1" in capsys.readouterr().out
