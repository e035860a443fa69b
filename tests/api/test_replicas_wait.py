"""A submit acknowledged only once REDIS_WAIT_REPLICAS replicas hold its job."""

from conveyor_core.settings import RedisSettings
from tests.api.conftest import make_app, serve

PROBLEM = "urn:conveyor:problem:redis-replicas-short"


async def test_a_job_no_replica_holds_is_a_503_that_says_it_may_exist(redis_url: str) -> None:
    # One Redis node has no replica: every WAIT comes back short.
    settings = RedisSettings(url=redis_url, socket_timeout_s=2, wait_replicas=1, wait_timeout_ms=50)
    async with serve(make_app(redis_url, redis=settings)) as client:
        headers = {"Idempotency-Key": "order-7"}
        response = await client.post("/v1/jobs/effect", json={"work_s": 0}, headers=headers)

        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0
        problem = response.json()
        assert problem["type"] == PROBLEM
        assert "0 of 1 replica(s)" in problem["detail"]
        assert "may exist" in problem["detail"]
        # The job was written (not undone): readable, and a retry with the
        # same key gets it rather than a second one.
        job_id = problem["job_id"]
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "queued"
        again = await client.post("/v1/jobs/effect", json={"work_s": 0}, headers=headers)
        assert again.status_code == 200
        assert again.json()["id"] == job_id


async def test_without_a_wait_the_submit_is_acknowledged_at_once(redis_url: str) -> None:
    settings = RedisSettings(url=redis_url, socket_timeout_s=2, wait_replicas=0)
    async with serve(make_app(redis_url, redis=settings)) as client:
        response = await client.post("/v1/jobs/effect", json={"work_s": 0})
        assert response.status_code == 201, response.text
