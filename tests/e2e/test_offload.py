"""Claim-check end to end: the real api and worker on one blob store, a folder
(CONVEYOR_BLOBS_URL, as the tests set it for every process) or an S3-protocol
server (moto's, on loopback). A 1 MiB payload leaves Redis, runs intact, and
its result reads back through the api: streamed from a folder, or a presigned
GET from S3."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.constants import job_key_prefix

from conveyor_core.claimcheck import BLOB_FIELD
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from tests.e2e.conftest import Stack, running
from tests.support.s3 import s3_server

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


async def job_key_bytes(redis_url: str, job_id: str) -> int:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        return int(await client.strlen(job_key_prefix + job_id))
    finally:
        await client.aclose()


@pytest.fixture(params=["folder", "s3"])
def stack_on(request: pytest.FixtureRequest, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api, started, on the run's folder store or on an S3 server."""
    if request.param == "folder":
        with running(Stack(redis_url, log_dir)) as stack:
            yield stack
        return
    with s3_server() as s3, running(Stack(redis_url, log_dir, **s3.environment("e2e"))) as stack:
        yield stack


async def test_a_1mib_payload_runs_intact_through_the_api_and_a_worker(stack_on: Stack) -> None:
    stack = stack_on
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
    result = stack.http.get(result_link, timeout=30, follow_redirects=True)
    assert result.status_code == 200
    # A folder streams through the api; S3's is a redirect to a presigned GET.
    on_s3 = stack.env.get("CONVEYOR_BLOBS_URL", "").startswith("s3://")
    assert [r.status_code for r in result.history] == ([307] if on_s3 else [])
    echoed = result.json()
    assert echoed["sha256"] == hashlib.sha256(data.encode()).hexdigest()
    assert echoed["echo"] == data
    payload = stack.http.get(done["payload"][BLOB_FIELD]["href"], timeout=30, follow_redirects=True)
    assert payload.json() == {"data": data, "echo": True}
