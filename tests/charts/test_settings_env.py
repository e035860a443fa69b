"""The chart's values reach the services' settings: each rendered environment
is read by the services' own settings classes, and every value comes out as set.

A misspelt variable name would be ignored by the settings (they ignore
unknown names), so each test asserts the value the setting ends up with.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import helm_python as helm
import pytest

from conveyor_api.settings import Settings as ApiSettings
from conveyor_seed.settings import MailPolicySettings, SeedSettings
from conveyor_worker.settings import Settings as WorkerSettings
from tests.charts.chart import (
    Manifest,
    Rendered,
    containers,
    render,
    render_named,
    values_file,
)

pytestmark = pytest.mark.xdist_group("charts")


@contextmanager
def rendered_environment(rendered: Rendered, workload: str) -> Iterator[dict[str, str]]:
    """os.environ as the workload's container would see it (and nothing from this test's)."""
    (container,) = list(containers(rendered.one("Deployment", workload)))
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:  # stands in for a Secret: settings only need a well-formed value
            env[item["name"]] = "from-a-secret"
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith(("CONVEYOR_", "REDIS_", "OTEL_")):
                del os.environ[name]
        os.environ.update(env)
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _api(rendered: Rendered) -> ApiSettings:
    with rendered_environment(rendered, "conveyor-api"):
        return ApiSettings()


def _worker(rendered: Rendered) -> WorkerSettings:
    with rendered_environment(rendered, "conveyor-worker-default"):
        return WorkerSettings()


def _seed(rendered: Rendered, workload: str = "conveyor-worker-default") -> SeedSettings:
    """The seed app's settings (mail, summarizer, schedules, documents), as its
    job module reads them in the workload's pods."""
    with rendered_environment(rendered, workload):
        return SeedSettings()


API_DEFAULTS = (
    "rate_limit_per_s",
    "rate_limit_burst",
    "max_body_bytes",
    "max_json_depth",
    "max_payload_bytes",
    "max_upload_bytes",
    "max_filename_chars",
    "cors_origins",
)


def test_chart_defaults_are_the_api_defaults() -> None:
    settings = _api(render_named("defaults"))
    for name in API_DEFAULTS:
        assert getattr(settings, name) == ApiSettings.model_fields[name].default, name
    assert settings.keys_file is not None
    assert not settings.keys, "keys come from the file only, which can change"
    assert not settings.development
    # Unlike the api's default, /metrics on a port of its own, apart from the ingress's.
    assert settings.metrics_port == 9464
    assert settings.metrics_port != settings.port


def test_production_values_reach_the_api() -> None:
    settings = _api(render_named("production"))
    assert settings.metrics_port == 9090
    assert settings.rate_limit_per_s == 20.5
    assert settings.rate_limit_burst == 40
    assert settings.max_body_bytes == 2_097_152
    assert settings.max_upload_bytes == 20_971_520
    assert settings.cors_origin_list == ["https://app.example.com", "https://admin.example.com"]
    # Mail and summarizer settings are the workers' alone.
    with rendered_environment(render_named("production"), "conveyor-api") as env:
        assert not [name for name in env if name.startswith(("CONVEYOR_SMTP", "CONVEYOR_SUMM"))]


def test_production_values_reach_the_workers() -> None:
    settings = _seed(render_named("production"))
    assert settings.smtp.host == "smtp.example.com"
    assert settings.smtp.port == 465
    assert settings.smtp.tls == "tls"
    assert settings.smtp.username == "conveyor"
    assert settings.smtp.from_ == "conveyor@example.com"
    assert settings.smtp.password.get_secret_value() == "from-a-secret"
    assert settings.summarizer.url == "https://llm.example.com/v1"
    assert settings.summarizer.model == "summarizer-small"
    assert settings.summarizer.api_key.get_secret_value() == "from-a-secret"
    assert settings.cron.digest_to == "ops@example.com"
    assert settings.cron.digest_schedule == {
        "weekday": [0, 1, 2, 3, 4],
        "hour": 6,
        "minute": 0,
        "second": 0,
    }
    assert settings.cron.cleanup_schedule is None
    assert settings.mail.allowed_domains == ["example.com"]
    assert not settings.mail.allows("someone@elsewhere.example")


def test_the_allowed_mail_domains_reach_the_api_too_and_a_host_needs_them() -> None:
    """The api checks a document's summary address at upload, the workers every mail."""
    rendered = render_named("production")
    with rendered_environment(rendered, "conveyor-api") as env:
        assert env["CONVEYOR_MAIL_ALLOWED_DOMAINS"] == "example.com"
        assert MailPolicySettings().allows("a@example.com")
    values = values_file("production")
    values["smtp"]["allowedDomains"] = []
    with pytest.raises(helm.HelmRenderError, match=r"smtp\.allowedDomains is empty"):
        render(values)


def test_chart_defaults_keep_the_worker_schedules() -> None:
    settings = _seed(render_named("defaults"))
    cron_fields = type(settings.cron).model_fields
    assert settings.cron.digest_schedule == cron_fields["digest_schedule"].default
    assert settings.cron.cleanup_schedule == cron_fields["cleanup_schedule"].default
    assert not settings.smtp.configured


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"documentsMaxBytes": 1_000_000, "documentsRetentionS": 3600}, (1_000_000, 3600)),
        ({}, (5 * 1024 * 1024, 7 * 86_400)),
    ],
)
def test_document_limits_reach_both_services(
    values: dict[str, Any], expected: tuple[int, int]
) -> None:
    rendered = render({"jobs": values})
    for workload in ("conveyor-api", "conveyor-worker-default"):
        settings = _seed(rendered, workload).documents
        assert (settings.max_bytes, settings.retention_s) == expected


def test_every_rendered_conveyor_variable_is_a_setting() -> None:
    """No variable the chart sets goes unread (a typo would be silently ignored)."""
    rendered = render_named("production")
    api = _api(rendered)
    worker = _worker(rendered)
    seed = _seed(rendered)
    read = _setting_names(api) | _setting_names(worker) | _setting_names(seed)
    for workload in ("conveyor-api", "conveyor-worker-default"):
        with rendered_environment(rendered, workload) as env:
            unread = [
                name
                for name in env
                if name.startswith(("CONVEYOR_", "REDIS_")) and name not in read
            ]
        assert unread == [], workload


def _setting_names(settings: Any) -> set[str]:
    """Every environment variable a settings object (and its nested ones) reads."""
    names: set[str] = set()
    config: Manifest = dict(settings.model_config)
    prefix = str(config.get("env_prefix", ""))
    for field_name, info in type(settings).model_fields.items():
        value = getattr(settings, field_name)
        if hasattr(type(value), "model_fields") and hasattr(value, "model_config"):
            names |= _setting_names(value)
            continue
        alias = info.validation_alias
        names.add(str(alias) if isinstance(alias, str) else f"{prefix}{field_name}".upper())
    return names


def test_an_external_cluster_reaches_both_services_redis_settings() -> None:
    rendered = render_named("redis-cluster")
    for settings in (_api(rendered).redis, _worker(rendered).redis):
        assert settings.cluster
        assert settings.tls
        assert settings.cluster_seeds == [
            ("redis-cluster-0.redis.svc", 6379),
            ("redis-cluster-1.redis.svc", 6380),
        ]
        assert settings.cluster_credentials() == ("conveyor", "from-a-secret")
