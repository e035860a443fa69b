"""The api keys the chart gives the api: generated once when none are named, else the operator's.

An offline render's `lookup` finds nothing, so the upgrade test copies the
chart and answers the Secret templates' own `lookup` call with the Secret an
earlier render made: the templates' reuse logic runs in the real Helm engine.
"""

import base64
import copy
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
    Rendered,
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


def _keys_file(rendered: Rendered) -> tuple[str, str]:
    """The Secret and key the api's keys file (CONVEYOR_API_KEYS_FILE) is mounted from."""
    api = rendered.one("Deployment", "conveyor-api")
    (container,) = containers(api)
    path = Path(env_of(container)["CONVEYOR_API_KEYS_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert "subPath" not in mount, "a subPath mount is never updated when the Secret changes"
    (volume,) = [
        v for v in api["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    (item,) = volume["secret"]["items"]
    assert item["path"] == path.name
    return volume["secret"]["secretName"], item["key"]


def test_generated_secret_holds_an_admin_and_a_read_only_key_and_only_hashes_reach_the_api() -> (
    None
):
    rendered = render_named("defaults")
    secret = rendered.one("Secret", "conveyor-api-keys")
    # Uninstalling must not invalidate the key every client holds.
    assert annotations(secret)["helm.sh/resource-policy"] == "keep"
    data = _data(secret)
    key, client_key = data["api-key"], data["client-key"]
    for raw in (key, client_key):
        assert len(raw) == 48
        assert raw.isalnum()
    assert key != client_key
    admin, reader = [ApiKey.model_validate(item) for item in json.loads(data["api-keys"])]
    assert (admin.name, admin.sha256) == ("admin", key_digest(key))
    # Every scope the api knows: a new scope in the code without the chart fails here.
    assert admin.scopes == set(Scope)
    # `helm test` and KEDA only read: their key can do nothing else.
    assert (reader.name, reader.sha256) == ("cluster-reader", key_digest(client_key))
    assert reader.scopes == {Scope.JOBS_READ}

    other = _data(render({}).one("Secret", "conveyor-api-keys"))
    assert other["api-key"] != key, "each install generates its own keys"
    assert other["client-key"] != client_key

    # The api gets the hash list as a file, and only that key of the Secret.
    assert _keys_file(rendered) == ("conveyor-api-keys", "api-keys")
    (hook,) = rendered.hooks()
    assert _secret_ref(env_of(hook["spec"]["containers"][0]), "CONVEYOR_API_KEY") == (
        "conveyor-api-keys",
        "client-key",
    )
    # The keys are in their Secret and nowhere else: not in other objects, not in NOTES.
    everything_else = yaml.safe_dump([o for o in rendered.all() if o["kind"] != "Secret"])
    assert key not in everything_else + rendered.notes
    assert client_key not in everything_else + rendered.notes
    assert "kubectl --namespace conveyor get secret conveyor-api-keys" in rendered.notes


PERSONAL_KEYS = [
    {"name": "alice", "sha256": key_digest("alice's key").upper(), "scopes": ["jobs:read"]},
    {"name": "ci@build", "sha256": key_digest("ci's key"), "scopes": ["jobs:submit"]},
]


def test_each_person_gets_a_key_of_their_own_by_its_hash() -> None:
    rendered = render({"auth": {"keys": PERSONAL_KEYS}})
    listed = [
        ApiKey.model_validate(item)
        for item in json.loads(_data(rendered.one("Secret", "conveyor-api-keys"))["api-keys"])
    ]
    assert [k.name for k in listed] == ["admin", "cluster-reader", "alice", "ci@build"]
    alice, ci = listed[2:]
    assert alice.sha256 == key_digest("alice's key")
    assert alice.scopes == {Scope.JOBS_READ}
    assert ci.scopes == {Scope.JOBS_SUBMIT}
    # Keys change without rolling the api: it re-reads the file.
    checksum = "checksum/config"
    pods = [
        r.one("Deployment", "conveyor-api")["spec"]["template"]["metadata"]["annotations"]
        for r in (rendered, render_named("defaults"))
    ]
    assert pods[0][checksum] == pods[1][checksum]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"auth": {"keys": [{**PERSONAL_KEYS[0], "name": "admin"}]}}, "belongs to a key"),
        (
            {"auth": {"existingSecret": "mine", "keys": PERSONAL_KEYS}},
            r"with auth\.existingSecret",
        ),
    ],
)
def test_personal_keys_that_cannot_work_are_refused(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=complaint):
        render(values)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "bob", "sha256": "not-hex", "scopes": ["jobs:read"]},
        {"name": "bob", "sha256": key_digest("k"), "scopes": ["jobs:fly"]},
        {"name": "bob smith", "sha256": key_digest("k"), "scopes": []},
        {"name": "bob", "sha256": key_digest("k"), "scopes": [], "key": "raw"},
    ],
)
def test_the_schema_refuses_a_malformed_personal_key(entry: dict[str, Any]) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"auth": {"keys": [entry]}})


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


def test_an_upgrade_from_before_the_client_key_and_acl_users_adds_them(tmp_path: Path) -> None:
    """Secrets an older chart made hold only the admin key and the Redis password:
    the upgrade keeps both and generates what is new."""
    first = _render_chart(_chart_with_cluster_answer(tmp_path / "1", {}), {}, upgrade=False)
    older = copy.deepcopy(first)
    api_data = older["templates/api/secret.yaml"]["data"]
    redis_data = older["templates/redis/secret.yaml"]["data"]
    del api_data["client-key"]
    del redis_data["redis-api-password"], redis_data["redis-worker-password"]
    upgraded = _render_chart(_chart_with_cluster_answer(tmp_path / "2", older), {}, upgrade=True)
    api, redis = (_data(upgraded[t]) for t in SECRET_TEMPLATES)
    assert api["api-key"] == _data(first["templates/api/secret.yaml"])["api-key"]
    assert redis["redis-password"] == _data(first["templates/redis/secret.yaml"])["redis-password"]
    assert len(api["client-key"]) == 48
    assert len(redis["redis-api-password"]) == len(redis["redis-worker-password"]) == 32
    names = [k["name"] for k in json.loads(api["api-keys"])]
    assert names == ["admin", "cluster-reader"]


def test_an_existing_secret_replaces_the_generated_one() -> None:
    rendered = render_named("keda-metrics-api")
    assert "conveyor-api-keys" not in [s["metadata"]["name"] for s in rendered.all("Secret")]
    assert _keys_file(rendered) == ("conveyor-api-keys", "api-keys")
    auth = rendered.one("TriggerAuthentication", "conveyor-queues")
    assert auth["spec"]["secretTargetRef"][0]["name"] == "conveyor-client-key"


def test_keda_metrics_api_sends_the_generated_key() -> None:
    values = values_file("keda-metrics-api")
    values["auth"] = {}
    rendered = render(values)
    auth = rendered.one("TriggerAuthentication", "conveyor-queues")
    # The read-only key: KEDA reads /v1/queues and nothing else.
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "conveyor-api-keys", "key": "client-key"}
    ]


def test_a_client_key_without_the_keys_it_belongs_to_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"auth\.clientKeySecret"):
        render({"auth": {"clientKeySecret": "my-client-key"}})


def test_keys_of_their_own_join_the_generated_list_with_their_policies() -> None:
    """auth.keys: one entry per person or client, with only the key's hash, and its policy."""
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
    rendered = render({"auth": {"keys": people}})
    listed = json.loads(_data(rendered.one("Secret", "conveyor-api-keys"))["api-keys"])
    keys = {k.name: k for k in (ApiKey.model_validate(item) for item in listed)}
    assert set(keys) == {"admin", "cluster-reader", "ada", "billing"}
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
    ],
)
def test_the_schema_refuses_a_bad_key_entry(entry: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"auth": {"keys": [entry]}})


def test_keys_of_their_own_with_an_existing_secret_are_refused() -> None:
    entry = {"name": "ada", "sha256": "0" * 64, "scopes": ["jobs:read"]}
    with pytest.raises(helm.HelmRenderError, match=r"auth\.keys"):
        render({"auth": {"existingSecret": "mine", "keys": [entry]}})
