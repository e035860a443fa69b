"""Documents keep their bytes out of Redis: 200 uploads of 5 MiB each fit a Redis
capped at 64 MB (noeviction), and another key's jobs are submitted and run
all along (issue: bytes out of the broker)."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conveyor_api.auth import Scope
from conveyor_core.local.redis_server import RedisProcess
from tests.e2e.conftest import Stack, running
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, keys_env
from tests.support.redis_faults import configured

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
UPLOADS = 200
OTHER_KEY = "cvk_test_other0123456789abcdef0123456789"
# Digits and spaces: text, but no words or sentences, so processing it is cheap.
DOCUMENT = (b"0123456789 " * (5 * MiB // 11 + 1))[: 5 * MiB]


@pytest.mark.timeout(600)
def test_200_uploads_of_5_mib_fit_a_64_mb_redis_and_other_work_goes_on(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY),
        api_key("other", OTHER_KEY, [Scope.JOBS_SUBMIT, Scope.JOBS_READ]),
    )
    env = {"CONVEYOR_API_KEYS": keys, "CONVEYOR_DOCUMENTS_MAX_BYTES": str(6 * MiB)}
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    with (
        configured(own_redis.url, maxmemory="64mb", maxmemory_policy="noeviction"),
        running(Stack(own_redis.url, log_dir, **env), workers=1) as stack,
    ):
        stack.http.timeout = httpx.Timeout(60)

        def upload(i: int) -> int:
            files = {"file": (f"numbers-{i}.txt", DOCUMENT)}
            return stack.http.post("/v1/documents", files=files).status_code

        others: list[str] = []
        with ThreadPoolExecutor(4) as pool:
            uploads = [pool.submit(upload, i) for i in range(UPLOADS)]
            for i, done in enumerate(uploads):
                assert done.result() == 202, i
                if i % 20 == 0:  # another key's job, submitted and run meanwhile
                    submitted = stack.http.post(
                        "/v1/jobs/create_task", json={"sleep_s": 0}, headers=other
                    )
                    assert submitted.status_code == 201, submitted.text
                    others.append(submitted.json()["id"])
        for job_id in others:
            assert stack.wait_for_state(job_id, "complete", timeout_s=120)["state"] == "complete"
        memory: dict[str, int] = stack.redis.info("memory")  # type: ignore[assignment]
        used = int(memory["used_memory"])
        assert used < 64 * MiB
        documents = stack.redis.zcard("conveyor:{stats}:documents:expiry")
        assert documents == UPLOADS
