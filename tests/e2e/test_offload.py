"""Claim-check end to end: the real api and worker, one folder blob store
(CONVEYOR_BLOBS_URL, as the tests set it for every process). A 1 MiB payload
leaves Redis, runs intact, and its result reads back through the api."""

import hashlib

import pytest
from arq.constants import job_key_prefix

from conveyor_core.claimcheck import BLOB_FIELD
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


async def job_key_bytes(redis_url: str, job_id: str) -> int:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        return int(await client.strlen(job_key_prefix + job_id))
    finally:
        await client.aclose()


async def test_a_1mib_payload_runs_intact_through_the_api_and_a_worker(stack: Stack) -> None:
    data = "e" * (MIB - 1) + "!"
    submitted = stack.submit("bulky", {"data": data, "echo": True}, timeout=30)
    job_id = submitted["id"]
    # Over the api's inline limit (1 MiB): the payload shows as a link.
    assert submitted["payload"][BLOB_FIELD]["size"] > MIB
    # Redis holds the reference, not the MiB.
    assert 0 < await job_key_bytes(stack.redis_url, job_id) < 2048

    stack.start_worker()
    done = stack.wait_for_state(job_id, "complete")
    # The result is over the inline limit too: a link that fetches it.
    result_link = done["result"][BLOB_FIELD]["href"]
    result = stack.http.get(result_link, timeout=30)
    assert result.status_code == 200
    echoed = result.json()
    assert echoed["sha256"] == hashlib.sha256(data.encode()).hexdigest()
    assert echoed["echo"] == data
    payload = stack.http.get(done["payload"][BLOB_FIELD]["href"], timeout=30)
    assert payload.json() == {"data": data, "echo": True}
