"""An evicting Redis would silently drop acknowledged jobs: both real services
warn in their log, export the policy, and refuse to be ready unless told otherwise."""

from pathlib import Path

import httpx
import pytest

from conveyor_core.local.redis_server import RedisProcess
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
