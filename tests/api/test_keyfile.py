"""The keys file's reader and reloader (keyfile.py), on real files; the e2e test
tests/e2e/test_key_rotation.py shows a running api process revoke a key."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from conveyor_api.auth import ApiKey, Scope
from conveyor_api.keyfile import KeyFileError, KeyFileReloader
from conveyor_api.settings import Settings
from tests.support.auth import api_key, keys_env


def test_the_keys_come_from_the_environment_or_a_file_not_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_API_KEYS", keys_env())
    monkeypatch.setenv("CONVEYOR_API_KEYS_FILE", str(tmp_path / "keys"))
    with pytest.raises(ValidationError, match="both set"):
        Settings()
    monkeypatch.delenv("CONVEYOR_API_KEYS")
    assert Settings().keys_file == tmp_path / "keys"


def reloads(outcome: str) -> float:
    value = REGISTRY.get_sample_value("conveyor_api_keys_reloads_total", {"outcome": outcome})
    assert value is not None, "every outcome is exported from the start"
    return value


def rejected(path: Path) -> float | None:
    return REGISTRY.get_sample_value("conveyor_api_keys_file_rejected", {"path": str(path)})


async def test_a_changed_file_replaces_the_ring_and_a_bad_one_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(keys_env(api_key("a", "key-a", {Scope.JOBS_READ})))
    reloader = KeyFileReloader(path, interval_s=60)
    state = SimpleNamespace(keyring=reloader.load())
    reloader.start(state)
    before = {outcome: reloads(outcome) for outcome in ("applied", "invalid", "unreadable")}
    try:
        assert state.keyring.find("key-a") is not None
        assert await reloader.check() is False, "unchanged: the same ring"

        path.write_text(keys_env(api_key("b", "key-b")))
        assert await reloader.check() is True
        assert rejected(path) == 0
        assert state.keyring.find("key-a") is None
        assert state.keyring.find("key-b") is not None

        good = state.keyring
        for broken in ("", "[{", '[{"name": "b", "sha256": "x", "scopes": []}]'):
            path.write_text(broken)
            assert await reloader.check() is False
            assert state.keyring is good
            assert rejected(path) == 1
        # Two keys of one name: refused as a whole, not half applied.
        path.write_text(keys_env(api_key("b", "key-1"), api_key("b", "key-2")))
        assert await reloader.check() is False
        path.unlink()
        assert await reloader.check() is False
        assert await reloader.check() is False
        assert state.keyring is good
        # Counted, so that an alert can say the file is broken while the old keys serve.
        assert reloads("applied") - before["applied"] == 1
        assert reloads("invalid") - before["invalid"] == 4
        assert reloads("unreadable") - before["unreadable"] == 1, "once per outage"
        path.write_text(keys_env(api_key("b", "key-b")))
        assert await reloader.check() is True, "readable again: read anew"
        assert rejected(path) == 0
    finally:
        await reloader.stop()


def test_a_missing_or_invalid_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot be read"):
        KeyFileReloader(tmp_path / "absent", 5).load()
    (tmp_path / "keys").write_text('[{"name": "a", "sha256": "secret-ish", "scopes": []}]')
    with pytest.raises(KeyFileError, match=r"0\.sha256") as caught:
        KeyFileReloader(tmp_path / "keys", 5).load()
    assert "secret-ish" not in str(caught.value), "the error names the field, not its value"


async def test_keys_whose_policy_the_catalog_refuses_are_refused_at_start_and_on_reload(
    tmp_path: Path,
) -> None:
    """A policy naming an unknown job type is a typo: never applied, start or reload."""

    def no_unknown_types(keys: list[ApiKey]) -> None:
        for key in keys:
            if key.job_types and not key.job_types <= {"known"}:
                raise ValueError(f"api key {key.name!r}: job_types names an unknown type")

    path = tmp_path / "keys"
    path.write_text(keys_env(api_key("a", "key-a", job_types={"nowhere"})))
    with pytest.raises(KeyFileError, match="unknown type"):
        KeyFileReloader(path, 60, validate=no_unknown_types).load()
    path.write_text(keys_env(api_key("a", "key-a", job_types={"known"})))
    reloader = KeyFileReloader(path, 60, validate=no_unknown_types)
    state = SimpleNamespace(keyring=reloader.load())
    reloader.start(state)
    try:
        good = state.keyring
        path.write_text(keys_env(api_key("b", "key-b", job_types={"nowhere"})))
        assert await reloader.check() is False
        assert state.keyring is good
        assert rejected(path) == 1
    finally:
        await reloader.stop()
