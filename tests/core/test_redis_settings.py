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
