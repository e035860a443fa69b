"""Documents keep their bytes out of Redis: 200 uploads of 5 MiB each fit a Redis
capped at 64 MB (noeviction), and another key's jobs are submitted and
claimed while the uploads go on (issue: bytes out of the broker). With a
quota of stored bytes on the uploading key, what it has no room for is
refused (429, Retry-After) and the rest is stored."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
CONCURRENCY = 4
OTHER_KEY = "cvk_test_other0123456789abcdef0123456789"
# Digits and spaces: text, but no words or sentences, so processing it is cheap.
DOCUMENT = (b"0123456789 " * (5 * MiB // 11 + 1))[: 5 * MiB]
# The quota's case: room for this many documents.
QUOTA_DOCUMENTS = 100


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quota", [False, True], ids=["no-quota", "byte-quota"])
def test_200_uploads_of_5_mib_fit_a_64_mb_redis_and_other_work_goes_on(
    own_redis: RedisProcess, log_dir: Path, quota: bool
) -> None:
    max_stored_bytes = QUOTA_DOCUMENTS * len(DOCUMENT) if quota else None
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY, max_stored_bytes=max_stored_bytes),
        api_key("other", OTHER_KEY, [Scope.JOBS_SUBMIT, Scope.JOBS_READ]),
    )
    env = {"CONVEYOR_API_KEYS": keys, "CONVEYOR_DOCUMENTS_MAX_BYTES": str(6 * MiB)}
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    with (
        configured(own_redis.url, maxmemory="64mb", maxmemory_policy="noeviction"),
        running(Stack(own_redis.url, log_dir, **env), workers=1) as stack,
    ):
        stack.http.timeout = httpx.Timeout(60)

        def upload(i: int) -> httpx.Response:
            files = {"file": (f"numbers-{i}.txt", DOCUMENT)}
            return stack.http.post("/v1/documents", files=files)

        others: list[str] = []
        answers: list[httpx.Response] = []
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            uploads = [pool.submit(upload, i) for i in range(UPLOADS)]
            for i, done in enumerate(uploads):
                answers.append(done.result())
                assert answers[-1].status_code in ((202, 429) if quota else (202,)), i
                if i % 20 == 0:  # another key's job, submitted and run meanwhile
                    submitted = stack.http.post(
                        "/v1/jobs/create_task",
                        json={"sleep_s": 0},
                        params={"priority": 0},  # ahead of the documents' jobs
                        headers=other,
                    )
                    assert submitted.status_code == 201, submitted.text
                    others.append(submitted.json()["id"])
            uploads_ended = datetime.now(UTC)
        finished = [stack.wait_for_state(job_id, "complete", timeout_s=120) for job_id in others]
        # Claimed while the uploads went on, not only once they were over: the
        # first half of them at least (the last ones may fairly start after).
        started = [datetime.fromisoformat(job["started_at"]) for job in finished]
        assert all(at < uploads_ended for at in started[: len(started) // 2]), (
            started,
            uploads_ended,
        )
        memory: dict[str, int] = stack.redis.info("memory")  # type: ignore[assignment]
        used = int(memory["used_memory"])
        assert used < 64 * MiB
        stored = [a for a in answers if a.status_code == 202]
        assert stack.redis.zcard("conveyor:{stats}:documents:expiry") == len(stored)
        if not quota:
            assert len(stored) == UPLOADS
            return
        # Checked before each upload is stored, so uploads in flight together may
        # each still fit: at most the others in flight go past the quota.
        assert QUOTA_DOCUMENTS <= len(stored) <= QUOTA_DOCUMENTS + CONCURRENCY - 1
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["field"] == "max_stored_bytes"
            assert int(refused.headers["retry-after"]) >= 1
