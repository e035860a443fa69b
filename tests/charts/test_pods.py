"""The chart's commands, ports, env names and probe paths match the code.

For each rendered Deployment and StatefulSet, the container's own command,
args and environment run as local processes (see `tests/charts/pods.py` for
what stands in for the cluster); their declared probes are called on their
ports and paths, a job runs through the api's Service port to completion,
and the chart's own `helm test` hook passes with its read-only key. The api
and the workers reach Redis as its ACL users, and the api re-reads its keys
when the Secret volume changes.
"""

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.charts import jobs
from tests.charts.chart import REPO_ROOT, Rendered, render, values_file
from tests.charts.pods import Cluster, Container
from tests.support.secure_redis import make_certificates

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chart-pods")]


def _submit_and_wait(
    api_url: str,
    api_key: str,
    job_type: str = "create_task",
    payload: dict[str, Any] | None = None,
    timeout_s: float = 30,
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as client:
        response = client.post(f"/v1/jobs/{job_type}", json=payload or {"sleep_s": 0})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == "complete":
                return job
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} never completed: {job}")


def _run_cluster(rendered: Rendered, workdir: Path) -> tuple[Cluster, dict[str, list[str]]]:
    cluster = Cluster(rendered, workdir)
    containers = cluster.start_all()
    probed: dict[str, list[str]] = {}
    for container in containers:
        checks = [container.wait_until("startupProbe")] if "startupProbe" in container.spec else []
        checks.append(container.wait_until("livenessProbe"))
        checks.append(container.wait_until("readinessProbe"))
        probed[container.pod] = checks
    return cluster, probed


# A deployment installs its job modules in its images; here the repository
# stands in for them. The api and the workers get the same setting.
JOB_MODULE_VALUES: dict[str, Any] = {
    "global": {"jobModules": f"conveyor_seed,{jobs.MODULE}"},
    "api": {"env": {"PYTHONPATH": str(REPO_ROOT)}},
    "worker": {"env": {"PYTHONPATH": str(REPO_ROOT)}},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("name", ["defaults", "two-pools"])
def test_rendered_pods_run_probe_and_finish_a_job(name: str, tmp_path: Path) -> None:
    values = _merge(values_file(name), JOB_MODULE_VALUES)
    if name == "two-pools":
        # /metrics on a port of its own, apart from the one the ingress reaches.
        values = _merge(values, {"api": {"metricsPort": 9090}})
    rendered = render(values)
    workloads = {w["metadata"]["name"] for w in rendered.workloads()}
    cluster, probed = _run_cluster(rendered, tmp_path)
    try:
        # Startup, liveness and readiness, each on its declared port and path (or command).
        assert all(len(checks) == 3 for checks in probed.values()), probed
        assert probed["conveyor-api"] == ["GET /healthz", "GET /healthz", "GET /readyz"]
        assert probed["conveyor-redis"] == ["TCP redis", "TCP redis", "exec sh"]
        # Every Deployment and StatefulSet runs, answering its probes.
        assert {c.pod for c in cluster.containers} == workloads
        assert all(c.alive() for c in cluster.containers), cluster.logs()
        server = next(c for c in cluster.containers if c.pod == "conveyor-redis")
        # The built-in Redis runs with the generated password and AOF, in its volume.
        assert server.env["REDIS_PASSWORD"]
        assert (tmp_path / "volumes" / "data").is_dir()

        # The api runs with the chart's generated key (its hash only, from the
        # mounted file), and refuses a request without it.
        api = next(c for c in cluster.containers if c.pod == "conveyor-api")
        api_key = cluster.secrets["conveyor-api-keys"]["api-key"]
        assert "CONVEYOR_API_KEYS" not in api.env
        keys_file = Path(api.env["CONVEYOR_API_KEYS_FILE"])
        assert keys_file.is_relative_to(tmp_path)
        assert api_key not in keys_file.read_text()
        assert [p.name for p in keys_file.parent.iterdir() if not p.name.startswith(".")] == [
            "keys.json"
        ], "only the hash list is mounted, not the raw keys"
        api_url = "http://" + cluster.service_address("conveyor-api", 80)
        anonymous = httpx.post(f"{api_url}/v1/jobs/create_task", json={"sleep_s": 0}, timeout=10)
        assert anonymous.status_code == 401, anonymous.text

        # A job through the api's Service port, with the generated key.
        job = _submit_and_wait(api_url, api_key)
        assert job["tries"] == 1
        if name == "two-pools":
            metrics_url = "http://" + cluster.service_address("conveyor-api", 9090)
            assert httpx.get(f"{metrics_url}/metrics", timeout=10).status_code == 200
            assert httpx.get(f"{api_url}/metrics", timeout=10).status_code == 404
            # The second pool takes the jobs of its own queue.
            note = _submit_and_wait(api_url, api_key, "deliver_note", {"text": "hi"})
            assert note["queue"] == "emails"
            assert note["result"] == f"{note['id']}: hi"

        _services_are_acl_users(cluster)

        # The chart's `helm test` hook, run as its pod would run: it sends the
        # generated read-only key, which can read but not submit.
        (hook,) = rendered.hooks()
        assert "CONVEYOR_API_KEY" in {e["name"] for e in hook["spec"]["containers"][0]["env"]}
        result = cluster.run_pod(hook)
        assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
        assert "workers on" in result.stdout
        reader = {"authorization": f"Bearer {cluster.secrets['conveyor-api-keys']['client-key']}"}
        refused = httpx.post(f"{api_url}/v1/jobs/create_task", json={}, headers=reader, timeout=10)
        assert refused.status_code == 403, refused.text

        if name == "defaults":
            _a_secret_change_revokes_a_key(cluster, api, api_url)
    finally:
        codes = cluster.stop_all()
    # SIGTERM drains and ends each process within the grace period. uvicorn
    # re-raises the signal after its graceful shutdown, so the api ends by it.
    assert set(codes.values()) <= {0, -signal.SIGTERM}, f"{codes}\n{cluster.logs()}"
    api = next(c for c in cluster.containers if c.pod == "conveyor-api")
    assert "Application shutdown complete" in api.output()


FORBIDDEN_REDIS_COMMANDS = (
    ("CONFIG", "GET", "maxmemory"),
    ("FLUSHALL",),
    ("DEBUG", "SLEEP", "0"),
    ("KEYS", "*"),
)


def _services_are_acl_users(cluster: Cluster) -> None:
    """The api and the workers connect as their own Redis users, which may run
    what a job needs and none of CONFIG, FLUSHALL, DEBUG or KEYS."""
    host, port = cluster.service_address("conveyor-redis", 6379).split(":")
    secrets = cluster.secrets["conveyor-redis"]
    admin = redis.Redis(host=host, port=int(port), password=secrets["redis-password"])
    users = set()
    for container in cluster.containers:
        if container.pod == "conveyor-redis":
            continue
        user = container.env["REDIS_USERNAME"]
        users.add(user)
        assert container.env["REDIS_PASSWORD"] == secrets[f"redis-{user}-password"]
        with redis.Redis(
            host=host, port=int(port), username=user, password=container.env["REDIS_PASSWORD"]
        ) as client:
            assert client.acl_whoami() == user
            assert client.info("memory")["maxmemory_policy"] == "noeviction"
            for command in FORBIDDEN_REDIS_COMMANDS:
                # The ACL refuses it (DEBUG is also off server-wide, so ask the ACL itself).
                verdict = admin.acl_dryrun(user, *command)  # type: ignore[no-untyped-call]
                assert b"no permissions" in verdict, (user, command, verdict)
                with pytest.raises(redis.exceptions.ResponseError):
                    client.execute_command(*command)
    assert users == {"api", "worker"}
    with admin:
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def _a_secret_change_revokes_a_key(cluster: Cluster, api: Container, api_url: str) -> None:
    """The kubelet rewrites the mounted key list when the Secret changes: the api
    stops accepting a removed key without a restart."""
    secret = cluster.secrets["conveyor-api-keys"]
    reader = {"authorization": f"Bearer {secret['client-key']}"}
    assert httpx.get(f"{api_url}/v1/queues", headers=reader, timeout=10).status_code == 200
    pid = api.process.pid if api.process else None
    keys = [k for k in json.loads(secret["api-keys"]) if k["name"] != "cluster-reader"]
    secret["api-keys"] = json.dumps(keys)
    (api_pod,) = [p for p in cluster.planned if p[0] == "conveyor-api"]
    (volume,) = [v for v in api_pod[1]["spec"]["volumes"] if v["name"] == "api-keys"]
    cluster.write_secret_volume(cluster.mounted["/etc/conveyor/api-keys"], volume["secret"])
    deadline = time.monotonic() + 60
    while httpx.get(f"{api_url}/v1/queues", headers=reader, timeout=10).status_code != 401:
        assert time.monotonic() < deadline, f"the removed key still works\n{api.output()}"
        time.sleep(0.2)
    assert api.process is not None
    assert api.process.pid == pid
    assert api.alive()


def test_a_wrong_password_keeps_the_services_unready(tmp_path: Path) -> None:
    """The probes do fail: with a password Redis does not know, readiness never passes."""
    rendered = render({})
    cluster = Cluster(rendered, tmp_path)
    cluster.secrets["conveyor-redis"]["redis-password"] = "server-password"
    redis_pod = next(p for p in cluster.planned if p[0] == "conveyor-redis")
    server = cluster.start(redis_pod[0], redis_pod[2], redis_pod[3], redis_pod[1]["spec"])
    server.wait_until("readinessProbe")
    # The readiness command really authenticates: with another password it fails.
    server.env["REDIS_PASSWORD"] = "client-password"
    with pytest.raises(AssertionError, match="readinessProbe"):
        server.probe("readinessProbe")
    # The api's own user, with a password Redis does not know.
    cluster.secrets["conveyor-redis"]["redis-api-password"] = "client-password"
    api_pod = next(p for p in cluster.planned if p[0] == "conveyor-api")
    api = cluster.start(api_pod[0], api_pod[2], api_pod[3], api_pod[1]["spec"])
    try:
        api.wait_until("livenessProbe")
        with pytest.raises(AssertionError, match="503"):
            api.probe("readinessProbe")
    finally:
        cluster.stop_all()


def test_the_built_in_redis_over_tls_serves_both_services(tmp_path: Path) -> None:
    """redis.tls: Redis listens only for TLS with the Secret's certificate; the
    api and the workers connect with rediss:// and verify it against its CA."""
    certs = make_certificates(tmp_path)
    tls_secret = {
        "tls.crt": certs.cert_file.read_text(),
        "tls.key": certs.key_file.read_text(),
        "ca.crt": certs.ca_file.read_text(),
    }
    values = _merge(JOB_MODULE_VALUES, {"redis": {"tls": {"enabled": True, "secret": "r-tls"}}})
    rendered = render(values)
    cluster = Cluster(rendered, tmp_path / "cluster", {"r-tls": tls_secret})
    cluster.workdir.mkdir()
    try:
        containers = cluster.start_all()
        for container in containers:
            container.wait_until("readinessProbe")
        api = next(c for c in containers if c.pod == "conveyor-api")
        assert api.env["REDIS_URL"].startswith("rediss://127.0.0.1:")
        host, port = cluster.service_address("conveyor-redis", 6379).split(":")
        # No plain-text port: a client without TLS gets no answer.
        with (
            redis.Redis(host=host, port=int(port), socket_timeout=2) as plain,
            pytest.raises(redis.exceptions.ConnectionError),
        ):
            plain.ping()
        api_url = "http://" + cluster.service_address("conveyor-api", 80)
        job = _submit_and_wait(api_url, cluster.secrets["conveyor-api-keys"]["api-key"])
        assert job["tries"] == 1
    finally:
        cluster.stop_all()
