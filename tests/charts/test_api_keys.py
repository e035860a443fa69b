"""The api keys the chart gives the api: generated once when none are named, else the operator's.

An offline render's `lookup` finds nothing, so the upgrade test copies the
chart and answers the Secret templates' own `lookup` call with the Secret an
earlier render made: the templates' reuse logic runs in the real Helm engine.
"""

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conveyor_api.auth import ApiKey, Reads, Scope, key_digest
from tests.charts.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    Manifest,
    annotations,
    containers,
    env_of,
    render,
    render_named,
    values_file,
)

pytestmark = pytest.mark.xdist_group("charts")

LOOKUP = 'lookup "v1" "Secret" .Release.Namespace $name'
SECRET_TEMPLATES = ("templates/api/secret.yaml", "templates/redis/secret.yaml")


def _data(secret: Manifest) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def _secret_ref(env: dict[str, Any], name: str) -> tuple[str, str]:
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_generated_secret_holds_a_random_admin_key_and_only_its_hash_reaches_the_api() -> None:
    rendered = render_named("defaults")
    secret = rendered.one("Secret", "conveyor-api-keys")
    # Uninstalling must not invalidate the key every client holds.
    assert annotations(secret)["helm.sh/resource-policy"] == "keep"
    data = _data(secret)
    key = data["api-key"]
    assert len(key) == 48
    assert key.isalnum()
    (entry,) = [ApiKey.model_validate(item) for item in json.loads(data["api-keys"])]
    assert entry.name == "admin"
    assert entry.sha256 == key_digest(key)
    # Every scope the api knows: a new scope in the code without the chart fails here.
    assert entry.scopes == set(Scope)

    other = _data(render({}).one("Secret", "conveyor-api-keys"))["api-key"]
    assert other != key, "each install generates its own key"

    api = env_of(next(containers(rendered.one("Deployment", "conveyor-api"))))
    assert _secret_ref(api, "CONVEYOR_API_KEYS") == ("conveyor-api-keys", "api-keys")
    (hook,) = rendered.hooks()
    assert _secret_ref(env_of(hook["spec"]["containers"][0]), "CONVEYOR_API_KEY") == (
        "conveyor-api-keys",
        "api-key",
    )
    # The key is in its Secret and nowhere else: not in other objects, not in NOTES.
    everything_else = yaml.safe_dump([o for o in rendered.all() if o["kind"] != "Secret"])
    assert key not in everything_else + rendered.notes
    assert "kubectl --namespace conveyor get secret conveyor-api-keys" in rendered.notes


def _chart_with_cluster_answer(tmp_path: Path, existing: dict[str, Manifest]) -> Path:
    """A copy of the chart whose Secret templates' `lookup` returns `existing` by template."""
    chart = tmp_path / "conveyor"
    shutil.copytree(CHART_DIR, chart)
    for template in SECRET_TEMPLATES:
        path = chart / template
        text = path.read_text()
        assert text.count(LOOKUP) == 1, f"{template} looks up its own Secret once"
        answer = f"cluster/{Path(template).parent.name}.json"
        (chart / answer).parent.mkdir(exist_ok=True)
        (chart / answer).write_text(json.dumps(existing.get(template, {})))
        path.write_text(text.replace(LOOKUP, f'.Files.Get "{answer}" | fromJson'))
    return chart


def _render_chart(chart_dir: Path, values: dict[str, Any], *, upgrade: bool) -> dict[str, Manifest]:
    """Secrets by template, from a render as an install or an upgrade would make it."""
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(
            values,
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    return {
        template.removeprefix("conveyor/"): yaml.safe_load(manifests[template])
        for template in manifests
        if template.removeprefix("conveyor/") in SECRET_TEMPLATES
    }


def test_an_upgrade_keeps_the_generated_key_and_password(tmp_path: Path) -> None:
    first = _render_chart(_chart_with_cluster_answer(tmp_path / "1", {}), {}, upgrade=False)
    assert set(first) == set(SECRET_TEMPLATES)
    # The cluster now holds what the install created; the upgrade looks it up.
    second = _render_chart(_chart_with_cluster_answer(tmp_path / "2", first), {}, upgrade=True)
    for template in SECRET_TEMPLATES:
        assert _data(second[template]) == _data(first[template]), template
    # With nothing found, the same copy generates anew: the answer is what kept them.
    third = _render_chart(_chart_with_cluster_answer(tmp_path / "3", {}), {}, upgrade=True)
    api_keys = "templates/api/secret.yaml"
    assert _data(third[api_keys])["api-key"] != _data(first[api_keys])["api-key"]


def test_an_existing_secret_replaces_the_generated_one() -> None:
    rendered = render_named("keda-metrics-api")
    assert "conveyor-api-keys" not in [s["metadata"]["name"] for s in rendered.all("Secret")]
    api = env_of(next(containers(rendered.one("Deployment", "conveyor-api"))))
    assert _secret_ref(api, "CONVEYOR_API_KEYS") == ("conveyor-api-keys", "api-keys")
    auth = rendered.one("TriggerAuthentication", "conveyor-queues")
    assert auth["spec"]["secretTargetRef"][0]["name"] == "conveyor-client-key"


def test_keda_metrics_api_sends_the_generated_key() -> None:
    values = values_file("keda-metrics-api")
    values["auth"] = {}
    rendered = render(values)
    auth = rendered.one("TriggerAuthentication", "conveyor-queues")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "conveyor-api-keys", "key": "api-key"}
    ]


def test_a_client_key_without_the_keys_it_belongs_to_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"auth\.clientKeySecret"):
        render({"auth": {"clientKeySecret": "my-client-key"}})


def test_keys_of_their_own_join_the_generated_list_with_their_policies() -> None:
    """auth.apiKeys: one entry per person or client, with only the key's hash."""
    people = [
        {"name": "ada", "sha256": key_digest("ada's key"), "scopes": ["jobs:read"], "reads": "own"},
        {
            "name": "billing",
            "sha256": key_digest("billing's key"),
            "scopes": ["jobs:submit", "jobs:read"],
            "job_types": ["create_task"],
            "queues": ["arq:queue"],
            "highest_priority": 3,
            "max_outstanding_jobs": 100,
            "reads": "own",
        },
    ]
    rendered = render({"auth": {"apiKeys": people}})
    listed = json.loads(_data(rendered.one("Secret", "conveyor-api-keys"))["api-keys"])
    keys = {k.name: k for k in (ApiKey.model_validate(item) for item in listed)}
    assert set(keys) == {"admin", "ada", "billing"}
    assert keys["admin"].scopes == set(Scope)
    assert keys["ada"].reads is Reads.OWN
    billing = keys["billing"]
    assert billing.job_types == frozenset({"create_task"})
    assert billing.queues == frozenset({"arq:queue"})
    assert (billing.highest_priority, billing.max_outstanding_jobs) == (3, 100)
    assert "billing's key" not in json.dumps(listed)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "x", "sha256": "0" * 64, "scopes": ["jobs:read"], "reads": "mine"},
        {"name": "x", "sha256": "0" * 64, "scopes": ["jobs:fly"]},
        {"name": "x", "sha256": "0" * 64, "scopes": [], "highest_priority": 10},
        {"name": "x", "sha256": "0" * 64, "scopes": [], "max_outstanding_jobs": 0},
        {"name": "x", "sha256": "0" * 64, "scopes": [], "jobTypes": ["typo"]},
        {"name": "x", "sha256": "not a hash", "scopes": []},
        {"name": "admin", "sha256": "0" * 64, "scopes": []},  # the generated key's name
    ],
)
def test_the_schema_refuses_a_bad_key_entry(entry: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"auth": {"apiKeys": [entry]}})


def test_keys_of_their_own_with_an_existing_secret_are_refused() -> None:
    entry = {"name": "ada", "sha256": "0" * 64, "scopes": ["jobs:read"]}
    with pytest.raises(helm.HelmRenderError, match=r"auth\.apiKeys"):
        render({"auth": {"existingSecret": "mine", "apiKeys": [entry]}})
