"""Keys rotate without a restart: the api process re-reads `CONVEYOR_API_KEYS_FILE`.

The file is replaced as the kubelet replaces a mounted Secret's file: a new
file renamed over the old one, never a write in place.
"""

import os
import time
from pathlib import Path

import httpx
import pytest

from conveyor_api.auth import Scope
from tests.support.auth import api_key, bearer, keys_env
from tests.support.processes import ServiceProcess, api_process, stop_all

pytestmark = pytest.mark.e2e

OLD_KEY = "cvk_rotation_old_0123456789abcdef0123456789"
NEW_KEY = "cvk_rotation_new_0123456789abcdef0123456789"
# What the issue asks: a revoked key stops working within a minute.
REVOKED_WITHIN_S = 60.0


def replace(path: Path, content: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(content)
    os.replace(staged, path)


def status_with(api: ServiceProcess, key: str) -> int:
    return httpx.get(f"{api.base_url}/v1/queues", headers=bearer(key), timeout=5).status_code


def wait_for_status(api: ServiceProcess, key: str, status: int) -> float:
    """Seconds until a request with `key` answers `status`; fails after a minute."""
    started = time.monotonic()
    while (waited_s := time.monotonic() - started) < REVOKED_WITHIN_S:
        if status_with(api, key) == status:
            return waited_s
        time.sleep(0.2)
    raise AssertionError(f"{key[:16]}… never got {status}:\n{api.output()}")


def test_replacing_a_key_in_the_file_revokes_the_old_one_without_a_restart(
    redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    replace(keys_file, keys_env(api_key("ops", OLD_KEY, {Scope.JOBS_READ})))
    api = api_process(redis_url, log_dir, CONVEYOR_API_KEYS_FILE=str(keys_file))
    # The file is the only source of keys (the environment's test key is not wanted).
    api.env.pop("CONVEYOR_API_KEYS")
    try:
        api.start()
        assert api.process is not None
        pid = api.process.pid
        assert status_with(api, OLD_KEY) == 200
        assert status_with(api, NEW_KEY) == 401

        replace(keys_file, keys_env(api_key("ops", NEW_KEY, {Scope.JOBS_READ})))
        wait_for_status(api, OLD_KEY, 401)
        assert status_with(api, NEW_KEY) == 200
        assert api.alive()
        assert api.process.pid == pid, "no restart"
        assert "api keys reloaded" in api.output()

        # A file that does not parse keeps the keys in force, and says why in the log.
        replace(keys_file, '[{"name": "ops", "sha256": "not-a-digest", "scopes": []}]')
        deadline = time.monotonic() + REVOKED_WITHIN_S
        while "is not a valid key list" not in api.output():
            assert time.monotonic() < deadline, api.output()
            time.sleep(0.2)
        assert status_with(api, NEW_KEY) == 200
        assert status_with(api, OLD_KEY) == 401
        assert "not-a-digest" not in api.output(), "the log names the error, not the input"
    finally:
        stop_all(api)


def test_a_keys_file_that_does_not_parse_stops_the_api_at_start(
    redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("[{")
    api = api_process(redis_url, log_dir, CONVEYOR_API_KEYS_FILE=str(keys_file))
    api.env.pop("CONVEYOR_API_KEYS")
    api.start(wait_ready=False)
    assert api.process is not None
    assert api.process.wait(timeout=30) != 0
    assert f"api keys file {keys_file} is not a valid key list" in api.output()
