"""The chart, linted and rendered by the real Helm engine for a matrix of values.

Every rendered object validates: core kinds against the two newest Kubernetes
versions kubernetes-validate knows, custom resources against their CRD schemas.
"""

import base64
import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.charts.chart import (
    CHART_DIR,
    NAMESPACE,
    Rendered,
    annotations,
    containers,
    env_of,
    lint,
    matrix,
    render,
    render_named,
    validate_crd,
    values_file,
)

pytestmark = pytest.mark.xdist_group("charts")

KUBERNETES_VERSIONS = sorted(
    kubernetes_validate.utils.all_versions(),
    key=lambda v: tuple(int(part) for part in v.split(".")),
)[-2:]
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
# No JSON schema for the Gateway API ships with kubernetes-validate or in the
# CRD schemas here; test_httproute checks that object field by field instead.
UNSCHEMAED = ("gateway.networking.k8s.io/",)


def test_two_kubernetes_versions_are_known() -> None:
    assert len(KUBERNETES_VERSIONS) == 2
    assert KUBERNETES_VERSIONS[-1] == kubernetes_validate.latest_version()


@pytest.mark.parametrize("name", matrix())
def test_lints_clean(name: str) -> None:
    report = lint(values_file(name))
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; info (1) is advice such as "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", matrix())
def test_every_object_validates(name: str) -> None:
    rendered = render_named(name)
    assert rendered.objects
    for template, obj in rendered.objects:
        api_version: str = obj["apiVersion"]
        if api_version.startswith(CRD_GROUPS):
            validate_crd(obj)
        elif api_version.startswith(UNSCHEMAED):
            continue
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    raise AssertionError(
                        f"{template} fails on Kubernetes {version}: {exc}"
                    ) from exc


def test_matrix_covers_what_the_chart_offers() -> None:
    kinds = {obj["kind"] for name in matrix() for obj in render_named(name).all()}
    assert kinds >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "Ingress",
        "HTTPRoute",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Pod",
    }


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"api": {"replicaz": 3}}, "replicaz"),
        ({"api": {"replicas": -1}}, "replicas"),
        ({"worker": {"pools": [{"name": "a", "queue": "q", "concurrency": 0}]}}, "concurrency"),
        ({"worker": {"pools": []}}, "pools"),
        ({"worker": {"autoscaling": {"mode": "sometimes"}}}, "mode"),
        ({"redis": {"persistance": {"enabled": False}}}, "persistance"),
        ({"worker": {"pools": [{"name": "Bad_Name", "queue": "q", "concurrency": 1}]}}, "name"),
        ({"externalRedis": {"url": "http://redis:6379"}}, "url"),
        ({"topLevelTypo": True}, "topLevelTypo"),
    ],
)
def test_schema_rejects_invalid_values(values: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmValuesError) as caught:
            chart.validate_schema(values)
        assert complaint in str(caught.value)
        # An install renders with the same check, so the typo stops `helm install` too.
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name="conveyor", namespace=NAMESPACE, is_install=True)


def test_external_redis_needs_a_url() -> None:
    with pytest.raises(helm.HelmError, match=r"externalRedis\.url is required"):
        render({"redis": {"enabled": False}})


def _pod_specs(rendered: Rendered) -> list[dict[str, Any]]:
    specs = [w["spec"]["template"]["spec"] for w in rendered.workloads()]
    return specs + [hook["spec"] for hook in rendered.all("Pod")]


@pytest.mark.parametrize("name", matrix())
def test_pods_are_hardened(name: str) -> None:
    for spec in _pod_specs(render_named(name)):
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["runAsUser"] > 0
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]


@pytest.mark.parametrize("name", matrix())
def test_workloads_probe_and_roll_on_config_change(name: str) -> None:
    for workload in render_named(name).workloads():
        for container in containers(workload):
            assert "livenessProbe" in container
            assert "readinessProbe" in container
        if workload["kind"] == "Deployment":
            assert "checksum/config" in annotations(workload["spec"]["template"])
            assert workload["spec"]["template"]["spec"]["topologySpreadConstraints"]


def test_config_checksum_follows_the_config() -> None:
    def checksum(values: dict[str, Any]) -> str:
        api = render(values).one("Deployment", "conveyor-api")
        return annotations(api["spec"]["template"])["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"otel": {"endpoint": "http://collector:4318"}})
    assert checksum({}) != checksum({"api": {"env": {"CONVEYOR_API_MAX_BODY_BYTES": "2048"}}})


@pytest.mark.parametrize("name", matrix())
def test_worker_grace_period_is_above_its_shutdown_wait(name: str) -> None:
    for worker in render_named(name).all("Deployment"):
        (container,) = containers(worker)
        if container["name"] != "worker":
            continue
        env = env_of(container)
        wait_s = int(env["CONVEYOR_WORKER_SHUTDOWN_WAIT_S"]["value"])
        grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_s >= wait_s + 5


def test_api_drains_before_it_stops() -> None:
    api = render_named("defaults").one("Deployment", "conveyor-api")
    (container,) = containers(api)
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    spec = api["spec"]["template"]["spec"]
    assert (
        spec["terminationGracePeriodSeconds"]
        > container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )


def test_two_pools_get_their_own_queue_concurrency_and_budget() -> None:
    rendered = render_named("two-pools")
    pools = {
        d["metadata"]["name"]: env_of(next(containers(d)))
        for d in rendered.all("Deployment")
        if d["metadata"]["name"].startswith("conveyor-worker-")
    }
    assert set(pools) == {"conveyor-worker-default", "conveyor-worker-emails"}
    assert pools["conveyor-worker-emails"]["CONVEYOR_WORKER_QUEUE"]["value"] == "emails"
    assert pools["conveyor-worker-emails"]["CONVEYOR_WORKER_MAX_JOBS"]["value"] == "50"
    assert pools["conveyor-worker-emails"]["CONVEYOR_WORKER_IDLE_POLL_S"]["value"] == "2"
    assert "CONVEYOR_WORKER_IDLE_POLL_S" not in pools["conveyor-worker-default"]
    emails = rendered.one("Deployment", "conveyor-worker-emails")
    assert emails["spec"]["replicas"] == 1
    assert next(containers(emails))["resources"]["limits"]["memory"] == "256Mi"
    # Selectors must not overlap, or one pool's PDB and autoscaler would count the other's pods.
    selectors = [
        d["spec"]["selector"]["matchLabels"]["conveyor.dev/pool"]
        for d in rendered.all("Deployment")
        if "conveyor.dev/pool" in d["spec"]["selector"]["matchLabels"]
    ]
    assert sorted(selectors) == ["default", "emails"]
    assert {p["metadata"]["name"] for p in rendered.all("PodDisruptionBudget")} >= {
        "conveyor-worker-default",
        "conveyor-worker-emails",
    }
    assert not rendered.all("HorizontalPodAutoscaler") or all(
        h["metadata"]["name"] == "conveyor-api" for h in rendered.all("HorizontalPodAutoscaler")
    )


def test_keda_prometheus_trigger_reads_the_pool_queue_latency() -> None:
    rendered = render_named("production")
    scaled = rendered.one("ScaledObject", "conveyor-worker-default")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "conveyor-worker-default"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 30)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "conveyor_queue_oldest_ready_age_seconds" in query
    assert f'namespace="{NAMESPACE}"' in query
    assert 'queue="arq:queue"' in query
    assert trigger["metadata"]["threshold"] == "2"
    # KEDA owns the HPA: a second one would fight it.
    assert [h["metadata"]["name"] for h in rendered.all("HorizontalPodAutoscaler")] == [
        "conveyor-api"
    ]


def test_keda_metrics_api_trigger_reads_queues_with_a_bearer_key() -> None:
    rendered = render_named("keda-metrics-api")
    scaled = rendered.one("ScaledObject", "conveyor-worker-default")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["url"] == f"http://conveyor-api.{NAMESPACE}.svc:80/v1/queues"
    assert trigger["metadata"]["valueLocation"] == 'queues.#(name=="arq:queue").oldest_ready_age_s'
    assert trigger["metadata"]["authMode"] == "bearer"
    auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "conveyor-client-key", "key": "api-key"}
    ]


def test_keda_off_means_a_plain_hpa_per_pool() -> None:
    rendered = render_named("defaults")
    assert rendered.all("ScaledObject") == []
    hpa = rendered.one("HorizontalPodAutoscaler", "conveyor-worker-default")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_builtin_redis_generates_a_password_and_never_ships_one() -> None:
    rendered = render_named("defaults")
    secret = rendered.one("Secret", "conveyor-redis")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert len(password) == 32
    assert (
        password
        != base64.b64decode(
            render({}).one("Secret", "conveyor-redis")["data"]["redis-password"]
        ).decode()
    ), "each install generates its own password"
    everything_else = yaml.safe_dump([o for o in rendered.all() if o["kind"] != "Secret"])
    assert password not in everything_else + rendered.notes
    redis = rendered.one("StatefulSet", "conveyor-redis")
    (container,) = containers(redis)
    assert "$(REDIS_PASSWORD)" in container["args"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    assert (
        redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "1Gi"
    )


def _secret_refs(env: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        name: (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for name, item in env.items()
        if "valueFrom" in item and "secretKeyRef" in item["valueFrom"]
    }


def test_existing_secrets_are_referenced_not_created() -> None:
    rendered = render_named("production")
    assert rendered.all("Secret") == []
    api = env_of(next(containers(rendered.one("Deployment", "conveyor-api"))))
    worker = env_of(next(containers(rendered.one("Deployment", "conveyor-worker-default"))))
    # Each service gets only the secrets it reads: mail and summarizer keys stay off the api.
    # Each its own Redis ACL user's password, from the operator's Secret.
    assert _secret_refs(api) == {
        "REDIS_PASSWORD": ("conveyor-redis-password", "redis-api-password"),
    }
    assert _secret_refs(worker) == {
        "REDIS_PASSWORD": ("conveyor-redis-password", "redis-worker-password"),
        "CONVEYOR_SMTP_PASSWORD": ("conveyor-smtp", "smtp-password"),
        "CONVEYOR_SUMMARIZER_API_KEY": ("conveyor-summarizer", "api-key"),
    }
    assert worker["CONVEYOR_SMTP_TLS"]["value"] == "tls"
    assert (
        api["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        == "http://otel-collector.observability.svc:4318"
    )
    assert api["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.2"
    assert "deployment.environment=production" in api["OTEL_RESOURCE_ATTRIBUTES"]["value"]


def test_external_redis_with_tls_ca() -> None:
    rendered = render_named("external-redis")
    assert rendered.all("StatefulSet") == []
    for name in ("conveyor-api", "conveyor-worker-default"):
        workload = rendered.one("Deployment", name)
        env = env_of(next(containers(workload)))
        assert env["REDIS_URL"]["value"] == "rediss://redis.example.com:6380/0"
        assert env["REDIS_USERNAME"]["value"] == "conveyor"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "managed-redis",
            "key": "password",
        }
        ca_file = env["REDIS_TLS_CA_FILE"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in next(containers(workload))["volumeMounts"]}
        assert mounts[ca_file.rsplit("/", 1)[0]] == "redis-tls"


def test_sentinel_settings_reach_both_services() -> None:
    rendered = render_named("sentinel")
    for name in ("conveyor-api", "conveyor-worker-default"):
        env = env_of(next(containers(rendered.one("Deployment", name))))
        assert env["REDIS_SENTINEL_MASTER"]["value"] == "conveyor"
        assert env["REDIS_SENTINEL_HOSTS"]["value"].split(",") == [
            "redis-sentinel-0.redis.svc:26379",
            "redis-sentinel-1.redis.svc:26379",
        ]


def test_blob_store_settings_reach_both_services() -> None:
    rendered = render(
        {
            "blobs": {
                "url": "s3://documents/prod",
                "endpoint": "https://minio.storage.svc:9000",
                "region": "eu-central-1",
                "pathStyle": True,
                "credentialsSecret": "minio-credentials",
            }
        }
    )
    for name in ("conveyor-api", "conveyor-worker-default"):
        env = env_of(next(containers(rendered.one("Deployment", name))))
        assert env["CONVEYOR_BLOBS_URL"]["value"] == "s3://documents/prod"
        assert env["CONVEYOR_BLOBS_ENDPOINT"]["value"] == "https://minio.storage.svc:9000"
        assert env["CONVEYOR_BLOBS_REGION"]["value"] == "eu-central-1"
        assert env["CONVEYOR_BLOBS_PATH_STYLE"]["value"] == "true"
        assert env["CONVEYOR_BLOBS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "minio-credentials",
            "key": "access-key-id",
        }
        assert env["CONVEYOR_BLOBS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "minio-credentials",
            "key": "secret-access-key",
        }
    assert "blobs.url is empty" not in rendered.notes
    default = render()
    assert "CONVEYOR_BLOBS_URL" not in env_of(
        next(containers(default.one("Deployment", "conveyor-api")))
    )  # the services' own default folder, which a pod cannot make: the notes say so
    assert "blobs.url is empty" in default.notes


def test_a_volume_every_pod_mounts_can_be_the_blob_store() -> None:
    """A ReadWriteMany claim (or any volume) mounted at the services' folder by
    the api and every worker: documents work without an object store."""
    claim = {"persistentVolumeClaim": {"claimName": "conveyor-blobs"}}
    rendered = render({"blobs": {"volume": claim}})
    for name in ("conveyor-api", "conveyor-worker-default"):
        pod = rendered.one("Deployment", name)["spec"]["template"]["spec"]
        assert {"name": "blobs", **claim} in pod["volumes"]
        container = next(containers(rendered.one("Deployment", name)))
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["blobs"] == "/var/lib/conveyor/blobs"
        env = env_of(container)
        assert env["CONVEYOR_BLOBS_URL"]["value"] == "file:///var/lib/conveyor/blobs"
    assert "blobs.url is empty" not in rendered.notes
    # An object store named as well is the one used; the volume is then idle.
    both = render({"blobs": {"volume": claim, "url": "s3://documents/prod"}})
    env = env_of(next(containers(both.one("Deployment", "conveyor-api"))))
    assert env["CONVEYOR_BLOBS_URL"]["value"] == "s3://documents/prod"
    # Without it, no volume of that name.
    default_pod = render().one("Deployment", "conveyor-api")["spec"]["template"]["spec"]
    assert "blobs" not in [v["name"] for v in default_pod["volumes"]]


def test_a_blob_store_reached_by_the_pods_cloud_identity() -> None:
    """No credentials in the pods: the service account's annotation (IRSA, GKE
    workload identity) gives them, and obstore finds them as AWS's SDKs would."""
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/documents"}
    rendered = render(
        {
            "blobs": {"url": "s3://documents/prod", "region": "eu-west-1"},
            "serviceAccount": {"annotations": role},
        }
    )
    (account,) = rendered.all("ServiceAccount")
    assert account["metadata"]["annotations"] == role
    for name in ("conveyor-api", "conveyor-worker-default"):
        deployment = rendered.one("Deployment", name)
        assert (
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
            == (account["metadata"]["name"])
        )
        env = env_of(next(containers(deployment)))
        assert env["CONVEYOR_BLOBS_URL"]["value"] == "s3://documents/prod"
        assert "CONVEYOR_BLOBS_ACCESS_KEY_ID" not in env
        assert "CONVEYOR_BLOBS_SECRET_ACCESS_KEY" not in env


def test_the_api_trusts_the_ingress_for_client_addresses() -> None:
    def hops(values: dict[str, Any]) -> str:
        env = env_of(next(containers(render(values).one("Deployment", "conveyor-api"))))
        return str(env["CONVEYOR_API_TRUSTED_PROXY_HOPS"]["value"])

    assert hops({}) == "0"
    ingress = {"enabled": True, "tls": [{"hosts": ["conveyor.example.com"], "secretName": "t"}]}
    assert hops({"api": {"ingress": ingress}}) == "1"
    assert hops({"api": {"ingress": ingress, "trustedProxyHops": 2}}) == "2"


def test_network_policies_let_only_the_services_reach_redis() -> None:
    rendered = render_named("defaults")
    policy = rendered.one("NetworkPolicy", "conveyor-redis")
    (rule,) = policy["spec"]["ingress"]
    components = sorted(
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]
    )
    assert components == ["api", "worker"]
    api_policy = rendered.one("NetworkPolicy", "conveyor-api")
    peers = api_policy["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in peers


def test_ingress_and_httproute_send_traffic_to_the_api_service() -> None:
    rendered = render_named("ingress")
    service = rendered.one("Service", "conveyor-api")
    ingress = rendered.one("Ingress", "conveyor-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "conveyor-api", "port": {"name": "http"}}
    assert service["spec"]["ports"][0]["name"] == "http"
    route = rendered.one("HTTPRoute", "conveyor-api")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["conveyor.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [
        {"name": "conveyor-api", "port": service["spec"]["ports"][0]["port"]}
    ]


def test_monitoring_includes_the_repo_rule_file_and_dashboard() -> None:
    rendered = render_named("production")
    rules = yaml.safe_load((CHART_DIR / "files/prometheus/conveyor.rules.yaml").read_text())
    prometheus_rule = rendered.one("PrometheusRule", "conveyor")
    assert prometheus_rule["spec"]["groups"] == rules["groups"]
    assert prometheus_rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = rendered.one("ConfigMap", "conveyor-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["conveyor.json"]) == json.loads(
        (CHART_DIR / "files/grafana/conveyor.json").read_text()
    )
    monitor = rendered.one("ServiceMonitor", "conveyor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The production values put the api's /metrics on its own port.
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "health"}
    api_service = rendered.one("Service", "conveyor-api")
    assert [p["name"] for p in api_service["spec"]["ports"]] == ["http", "metrics"]
    policy = rendered.one("NetworkPolicy", "conveyor-api")
    # Only Prometheus reaches the metrics port; the ingress reaches only `http`.
    assert [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]] == ["http", "metrics"]
    assert len(policy["spec"]["ingress"][1]["from"]) == 1
    # The metrics' `job` label is the job type, which the rules and dashboard group by.
    assert all(e["honorLabels"] for e in monitor["spec"]["endpoints"])
    worker_metrics = rendered.one("Service", "conveyor-worker-metrics")
    assert worker_metrics["spec"]["ports"][0]["name"] == "health"


def test_helm_test_hook_reads_through_the_service_with_the_client_key() -> None:
    rendered = render_named("production")
    (hook,) = rendered.hooks()
    assert annotations(hook)["helm.sh/hook"] == "test"
    env = env_of(hook["spec"]["containers"][0])
    assert env["CONVEYOR_URL"]["value"] == "http://conveyor-api:80"
    assert env["CONVEYOR_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "conveyor-client-key"
    # It only reads: GETs, and no job submitted.
    script = hook["spec"]["containers"][0]["args"][0]
    assert "/v1/jobs" not in script
    assert "method=" not in script
    # Pools that may scale to zero need no live worker.
    assert json.loads(env["STAFFED_QUEUES"]["value"]) == ["arq:queue"]
    to_zero = render({"worker": {"autoscaling": {"minReplicas": 0}}}).hooks()[0]
    assert env_of(to_zero["spec"]["containers"][0])["STAFFED_QUEUES"]["value"] == "[]"


def test_notes_say_how_to_reach_the_api_and_read_its_key() -> None:
    defaults = render_named("defaults").notes
    assert "port-forward service/conveyor-api" in defaults
    assert "get secret conveyor-api-keys -o jsonpath='{.data.api-key}' | base64 -d" in defaults
    production = render_named("production").notes
    assert "https://conveyor.example.com/docs" in production
    assert "generated" not in production
    assert "API keys: from Secret conveyor-api-keys" in production


def test_an_external_cluster_reaches_both_services_as_a_cluster_url() -> None:
    rendered = render_named("redis-cluster")
    assert rendered.all("StatefulSet") == []  # the built-in Redis stays out
    for name in ("conveyor-api", "conveyor-worker-default"):
        workload = rendered.one("Deployment", name)
        env = env_of(next(containers(workload)))
        assert env["REDIS_URL"]["value"] == (
            "rediss+cluster://redis-cluster-0.redis.svc:6379,redis-cluster-1.redis.svc:6380"
        )
        assert env["REDIS_USERNAME"]["value"] == "conveyor"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis-cluster",
            "key": "password",
        }
        assert "REDIS_SENTINEL_HOSTS" not in env
        ca_file = env["REDIS_TLS_CA_FILE"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in next(containers(workload))["volumeMounts"]}
        assert mounts[ca_file.rsplit("/", 1)[0]] == "redis-tls"
    # Egress to Redis: the usual ports and each seed's, once each.
    for policy in rendered.all("NetworkPolicy"):
        redis_ports = [
            [p["port"] for p in rule["ports"]]
            for rule in policy["spec"].get("egress", [])
            if 6379 in [p["port"] for p in rule["ports"]]
        ]
        assert redis_ports in ([], [[6379, 26379, 6380]])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"externalRedis": {"cluster": {"enabled": True, "seeds": ["a:6379"]}}},
            "redis.enabled=false",
        ),
        (
            {"redis": {"enabled": False}, "externalRedis": {"cluster": {"enabled": True}}},
            "seeds is empty",
        ),
        (
            {
                "redis": {"enabled": False},
                "externalRedis": {
                    "cluster": {"enabled": True, "seeds": ["a:6379"]},
                    "sentinel": {"enabled": True, "hosts": ["s:26379"]},
                },
            },
            "exclude each other",
        ),
    ],
)
def test_a_cluster_that_cannot_work_is_refused_at_render(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)
