"""REDIS_PASSWORD fills in the URL; logs and banners only ever see it masked."""

import pytest
from pydantic import SecretStr

from conveyor_core.settings import RedisSettings, masked_url, with_password


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://localhost:6379/0", "pw", "redis://:pw@localhost:6379/0"),
        ("rediss://user:old@redis.example.com/2", "new", "rediss://user:new@redis.example.com/2"),
        ("redis://[::1]:6379", "a/b:c@d", "redis://:a%2Fb%3Ac%40d@[::1]:6379"),
        ("unix:///run/redis.sock?db=1", "pw", "unix:///run/redis.sock?db=1&password=pw"),
        ("unix:///run/redis.sock?password=old", "pw", "unix:///run/redis.sock?password=pw"),
    ],
)
def test_redis_password_fills_or_overrides_the_urls(url: str, password: str, expected: str) -> None:
    assert with_password(url, password) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://app:hunter2@r.example.com/0", "rediss://app:***@r.example.com/0"),
        ("unix:///s.sock?password=hunter2&db=0", "unix:///s.sock?password=***&db=0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_urls_are_shown_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_password_setting_never_shows_in_a_repr() -> None:
    settings = RedisSettings(url="redis://localhost/0", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(settings)
    assert "hunter2" in settings.connection_url()
    assert settings.safe_url() == "redis://localhost/0"
    assert RedisSettings(url="rediss://h/0").tls
    assert not RedisSettings(url="redis://h/0").tls


@pytest.mark.parametrize(
    ("url", "seeds", "tls"),
    [
        ("redis+cluster://node-a:7000,node-b:7001", [("node-a", 7000), ("node-b", 7001)], False),
        ("rediss+cluster://app:pw@node-a:6380/", [("node-a", 6380)], True),
        ("redis+cluster://node-a, node-b:7001/0", [("node-a", 6379), ("node-b", 7001)], False),
        ("redis+cluster://[::1]:7000", [("::1", 7000)], False),
    ],
)
def test_a_cluster_url_names_its_seed_nodes(
    url: str, seeds: list[tuple[str, int]], tls: bool
) -> None:
    settings = RedisSettings(url=url)
    assert settings.cluster
    assert settings.cluster_seeds == seeds
    assert settings.tls is tls


def test_a_single_node_url_is_no_cluster() -> None:
    assert not RedisSettings(url="redis://localhost:6379/0").cluster


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://node-a:7000/2", "only database 0"),
        ("redis+cluster://node-a:port", "is not host:port"),
        ("redis+cluster://node-a:7000,,node-b", "is not host:port"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        RedisSettings(url=url)
    assert "REDIS_URL" in str(refused.value)


def test_a_cluster_takes_no_sentinels() -> None:
    with pytest.raises(ValueError, match="REDIS_SENTINEL_HOSTS"):
        RedisSettings(url="redis+cluster://node-a:7000", sentinel_hosts="s:26379")


def test_cluster_credentials_from_the_url_or_the_settings() -> None:
    in_url = RedisSettings(url="redis+cluster://app:p%40ss@node-a:7000")
    assert in_url.cluster_credentials() == ("app", "p@ss")
    assert in_url.safe_url() == "redis+cluster://app:***@node-a:7000"
    from_settings = RedisSettings(
        url="redis+cluster://node-a:7000", username="svc", password=SecretStr("hunter2")
    )
    assert from_settings.cluster_credentials() == ("svc", "hunter2")
    assert "hunter2" not in repr(from_settings)


def test_a_replica_wait_must_end_before_the_socket_timeout() -> None:
    with pytest.raises(ValueError, match="REDIS_WAIT_TIMEOUT_MS"):
        RedisSettings(wait_replicas=1, wait_timeout_ms=1000, socket_timeout_s=1.0)
    assert RedisSettings(wait_replicas=1, wait_timeout_ms=200).wait_timeout_ms == 200
