"""A refused upload leaves small log lines: no document, no address, in any line.

redis-py puts a failed pipeline command with its arguments in the error's
message; logged whole, one refused 5 MiB upload made a 5 MiB log line (and
under `make run` a pipe that stopped draining hung the api).
"""

from pathlib import Path

import httpx
import pytest

from conveyor_core.local.redis_server import RedisProcess
from tests.support.auth import AUTH_HEADERS
from tests.support.processes import api_process, stop_all
from tests.support.redis_faults import configured

pytestmark = pytest.mark.e2e

# "A few KB": every line of the api's log stays under this.
MAX_LINE_BYTES = 8 * 1024
DOCUMENT = (b"Ada Lovelace <ada@example.com> wrote this note. " * 110_000)[: 5 * 1024 * 1024 - 64]


def test_a_refused_5_mib_upload_leaves_no_large_log_line(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    api = api_process(own_redis.url, log_dir, CONVEYOR_API_RATE_LIMIT_PER_S="0").start()
    try:
        # Full: the document's bytes go to the blob store, its record is refused.
        room: dict[str, str | int] = {"maxmemory": 1, "maxmemory_policy": "noeviction"}
        with (
            configured(own_redis.url, **room),
            httpx.Client(base_url=api.base_url, headers=AUTH_HEADERS, timeout=30) as client,
        ):
            for _ in range(2):
                response = client.post(
                    "/v1/documents",
                    files={"file": ("notes.txt", DOCUMENT)},
                    data={"notify_email": "ada@example.com"},
                )
                assert response.status_code == 507, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert len(response.content) < 2048
            assert client.get("/healthz").status_code == 200
    finally:
        stop_all(api)
    log = api.output()
    assert "redis fault out_of_memory in POST /v1/documents: OutOfMemoryError" in log
    lines = log.splitlines()
    longest = max(len(line.encode()) for line in lines)
    assert longest < MAX_LINE_BYTES, f"a {longest}-byte log line"
    assert "wrote this note" not in log
    assert "ada@example.com" not in log
