"""Conveyor's job records: cursors, derived states, retention housekeeping."""

import pytest
from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.catalog import CREATE_TASK, CreateTask
from conveyor_core.enqueue import enqueue, fingerprint
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.store import InvalidCursorError, JobStore, decode_cursor, encode_cursor


def test_cursors_round_trip_and_reject_garbage() -> None:
    cursor = encode_cursor("1732460000123", "abc")
    assert decode_cursor(cursor) == ("1732460000123", "abc")
    for bad in ["", "!!", encode_cursor("not-a-number", "x"), "W10"]:
        with pytest.raises(InvalidCursorError):
            decode_cursor(bad)


def test_fingerprint_ignores_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_a_waiting_job_is_deferred_until_due_then_queued() -> None:
    raw = {
        "id": "j",
        "job_type": "t",
        "queue": "q",
        "state": "waiting",
        "payload": "{}",
        "max_tries": "3",
        "enqueued_at_ms": "1000",
        "ready_at_ms": "5000",
    }
    assert JobPublic.from_hash(raw, at_ms=4999).state is JobState.DEFERRED
    assert JobPublic.from_hash(raw, at_ms=5000).state is JobState.QUEUED


async def test_housekeeping_trims_index_entries_of_expired_jobs(redis: ArqRedis) -> None:
    store = JobStore(redis)
    kept = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=1))
    expired = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=1))
    await redis.delete(keys.job_key(expired.job_id))  # as its retention would

    removed = await store.trim_expired(CREATE_TASK.queue)

    assert removed == 2  # from the queue's and the global `all` index
    members = await redis.zrange(keys.index_key(keys.ALL, keys.ALL), 0, -1)
    assert members == [kept.job_id.encode()]
