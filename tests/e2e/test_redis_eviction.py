"""An evicting Redis would silently drop acknowledged jobs: both real services
warn in their log, export the policy, and refuse to be ready unless told otherwise."""

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from conveyor_core.local.redis_server import RedisProcess
from tests.e2e.conftest import Stack, running
from tests.support.auth import TEST_KEY
from tests.support.browser import open_page
from tests.support.processes import ServiceProcess, api_process, stop_all, worker_process
from tests.support.redis_faults import configured

pytestmark = pytest.mark.e2e

POLICY_METRIC = 'conveyor_redis_maxmemory_policy_info{policy="allkeys-lru"} 1.0'


def metrics(service: ServiceProcess) -> str:
    return httpx.get(f"{service.base_url}/metrics", timeout=5).text


def test_both_services_warn_and_stay_unready_on_allkeys_lru(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    with configured(own_redis.url, maxmemory_policy="allkeys-lru", maxmemory="20mb"):
        api = api_process(own_redis.url, log_dir).start(wait_ready=False)
        worker = worker_process(own_redis.url, log_dir).start()  # /healthz: alive
        try:
            problem = api.wait_for("/readyz", status=503).json()
            assert problem["type"] == "urn:conveyor:problem:redis-evicts"
            assert "allkeys-lru" in problem["detail"]
            assert "allkeys-lru" in worker.wait_for("/readyz", status=503).json()["detail"]
            for service in (api, worker):
                assert POLICY_METRIC in metrics(service)
                assert "conveyor_redis_memory_max_bytes 2.097152e+07" in metrics(service)
                assert "redis maxmemory-policy is allkeys-lru" in service.output()
        finally:
            stop_all(api, worker)


def test_with_the_opt_in_both_start_ready_and_still_warn(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    opt_in = {"REDIS_ALLOW_EVICTION": "true"}
    with configured(own_redis.url, maxmemory_policy="allkeys-lru"):
        api = api_process(own_redis.url, log_dir, **opt_in).start()  # waits for /readyz 200
        worker = worker_process(own_redis.url, log_dir, **opt_in).start()
        try:
            worker.wait_for("/readyz")
            api.wait_for("/readyz")
            for service in (api, worker):
                assert POLICY_METRIC in metrics(service)
                assert "REDIS_ALLOW_EVICTION is set" in service.output()
        finally:
            stop_all(api, worker)


def test_the_status_page_shows_the_policy_and_warns_when_redis_may_evict(
    own_redis: RedisProcess, log_dir: Path, tmp_path: Path
) -> None:
    # A quick memory check, so the page sees a change of policy within a second.
    env = {"REDIS_ALLOW_EVICTION": "true", "REDIS_MEMORY_CHECK_INTERVAL_S": "0.5"}
    api = api_process(own_redis.url, log_dir, **env).start()
    try:
        with open_page(tmp_path / "profile") as (page, errors):
            page.add_init_script(f"sessionStorage.setItem('conveyor.apiKey', {TEST_KEY!r})")
            page.goto(f"{api.base_url}/ui/")
            line = page.locator("#redis-line")
            expect(line).to_contain_text("Redis: maxmemory-policy noeviction; no maxmemory set.")
            expect(line).not_to_have_class(re.compile("problem"))

            with configured(own_redis.url, maxmemory_policy="allkeys-lru", maxmemory="64mb"):
                api.wait_for("/readyz")  # the opt-in: still ready
                expect(line).to_contain_text(
                    "Redis may evict jobs: its maxmemory-policy is allkeys-lru", timeout=10_000
                )
                expect(line).to_contain_text("allowed by REDIS_ALLOW_EVICTION")
                expect(line).to_contain_text("% of maxmemory used")
                expect(line).to_have_class(re.compile("problem"))
                page.screenshot(path=log_dir / "status-page-redis-evicts.png", full_page=True)
        assert errors.uncaught == []
        assert errors.console == []
    finally:
        stop_all(api)


def test_an_evicting_redis_acknowledges_no_submit_and_loses_no_acknowledged_job(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    """A client that ignores /readyz: while Redis may evict, every submit gets a
    503 (nothing acknowledged, so nothing to lose); what was acknowledged runs."""
    stack = Stack(own_redis.url, log_dir, CONVEYOR_API_RATE_LIMIT_PER_S="0")
    with running(stack, workers=1):
        acknowledged = [stack.submit("create_task", {"sleep_s": 0.01})["id"] for _ in range(20)]
        with configured(own_redis.url, maxmemory_policy="allkeys-lru", maxmemory="8mb"):
            stack.api.wait_for("/readyz", status=503)

            def submit(_: int) -> httpx.Response:
                return stack.http.post("/v1/jobs/create_task", json={"sleep_s": 0.01})

            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(submit, range(300)))
            statuses = Counter(a.status_code for a in answers)
            assert statuses == {503: 300}, statuses
            for answer in answers[:3]:
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["type"] == "urn:conveyor:problem:redis-evicts"
                assert int(answer.headers["retry-after"]) >= 1
        for job_id in acknowledged:
            stack.wait_for_state(job_id, "complete")
