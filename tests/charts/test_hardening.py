"""Chart defaults that fit production: /metrics apart from the api, no Ingress
without TLS unless told, egress NetworkPolicies, Redis ACL users and TLS.

Rendered by the real Helm engine; the matrix tests (test_render.py,
test_checkov.py) validate the same objects against Kubernetes' schemas and
checkov, and test_pods.py runs them (ACL users and read-only key included).
"""

from typing import Any

import helm_python as helm
import pytest

from tests.charts.chart import (
    CHART_DIR,
    Manifest,
    Rendered,
    containers,
    env_of,
    render,
    render_named,
    values_file,
)

pytestmark = pytest.mark.xdist_group("charts")

DNS_PORT = 53


def _ports(container: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _rule_ports(rule: Manifest) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def _egress(rendered: Rendered, name: str) -> list[Manifest]:
    policy = rendered.one("NetworkPolicy", name)
    assert "Egress" in policy["spec"]["policyTypes"]
    rules: list[Manifest] = policy["spec"]["egress"]
    return rules


def test_metrics_are_on_a_port_of_their_own_by_default() -> None:
    rendered = render({"monitoring": {"serviceMonitor": {"enabled": True}}})
    api = rendered.one("Deployment", "conveyor-api")
    (container,) = containers(api)
    ports = _ports(container)
    assert env_of(container)["CONVEYOR_API_METRICS_PORT"]["value"] == str(ports["metrics"])
    assert ports["metrics"] != ports["http"]
    service_ports = {p["name"]: p for p in rendered.one("Service", "conveyor-api")["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] == "metrics"
    # Prometheus scrapes the metrics port; the ingress routes to `http` only.
    (api_endpoint, _) = rendered.one("ServiceMonitor", "conveyor")["spec"]["endpoints"]
    assert api_endpoint["port"] == "metrics"
    policy = rendered.one("NetworkPolicy", "conveyor-api")
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    ingress_nginx = {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    assert by_port["metrics"] == [{"namespaceSelector": monitoring}]
    assert {"namespaceSelector": monitoring} not in by_port["http"]
    assert {"namespaceSelector": ingress_nginx} in by_port["http"]

    pods = render({"monitoring": {"podMonitor": {"enabled": True}}})
    (api_endpoint, _) = pods.one("PodMonitor", "conveyor")["spec"]["podMetricsEndpoints"]
    assert api_endpoint["port"] == "metrics"


def test_metrics_beside_the_api_when_asked() -> None:
    rendered = render({"api": {"metricsPort": 0}})
    (container,) = containers(rendered.one("Deployment", "conveyor-api"))
    assert "CONVEYOR_API_METRICS_PORT" not in env_of(container)
    assert set(_ports(container)) == {"http"}


def test_an_ingress_without_tls_is_refused_unless_allowed() -> None:
    values = values_file("ingress")
    values["api"]["ingress"]["tls"] = []
    with pytest.raises(helm.HelmRenderError, match=r"api\.ingress has no tls"):
        render(values)
    values["api"]["ingress"]["allowWithoutTls"] = True
    ingress = render(values).one("Ingress", "conveyor-api")
    assert "tls" not in ingress["spec"]
    with_tls = render_named("ingress").one("Ingress", "conveyor-api")
    assert with_tls["spec"]["tls"] == [
        {"secretName": "conveyor-tls", "hosts": ["conveyor.example.com"]}
    ]


def test_egress_by_default_reaches_dns_and_the_built_in_redis_only() -> None:
    rendered = render_named("defaults")
    for name in ("conveyor-api", "conveyor-worker"):
        dns, redis = _egress(rendered, name)
        assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {
            (DNS_PORT, "UDP"),
            (DNS_PORT, "TCP"),
        }
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert redis["to"] == [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": "conveyor",
                        "app.kubernetes.io/instance": "conveyor",
                        "app.kubernetes.io/component": "redis",
                    }
                }
            }
        ]
        assert _rule_ports(redis) == {6379}


def test_egress_follows_what_each_service_talks_to() -> None:
    rendered = render_named("production")
    api, worker = _egress(rendered, "conveyor-api"), _egress(rendered, "conveyor-worker")
    # Every rule names its ports: no rule opens every port to anywhere.
    assert all(rule["ports"] for rule in api + worker)
    # DNS, Redis and the OTLP collector (port from otel.endpoint) for both...
    assert [_rule_ports(r) for r in api] == [{DNS_PORT}, {6379}, {4318}]
    # ...SMTP (smtp.port) and the summarizer (its URL's port) for the workers alone.
    assert [_rule_ports(r) for r in worker] == [{DNS_PORT}, {6379}, {4318}, {465}, {443}]


def test_egress_peers_blob_store_and_extra_rules_come_from_values() -> None:
    rendered = render_named("hardened")
    api, worker = _egress(rendered, "conveyor-api"), _egress(rendered, "conveyor-worker")
    blob = {"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [443]}
    extra = {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [8443]}
    for rules in (api, worker):
        peers = [(r.get("to"), sorted(_rule_ports(r))) for r in rules]
        assert (blob["to"], blob["ports"]) in peers
        assert (extra["to"], extra["ports"]) in peers
    smtp = [r for r in worker if _rule_ports(r) == {587}]
    assert smtp == [
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 587, "protocol": "TCP"}]}
    ]
    assert not [r for r in api if _rule_ports(r) == {587}], "mail is the workers' alone"


def test_an_external_redis_is_reached_on_the_configured_ports() -> None:
    rendered = render_named("sentinel")
    for name in ("conveyor-api", "conveyor-worker"):
        _, redis = _egress(rendered, name)
        assert "to" not in redis
        assert _rule_ports(redis) == {6379, 26379}


def test_egress_policies_can_be_turned_off() -> None:
    rendered = render({"networkPolicy": {"egress": {"enabled": False}}})
    for name in ("conveyor-api", "conveyor-worker"):
        policy = rendered.one("NetworkPolicy", name)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert "egress" not in policy["spec"]


def _redis_args(rendered: Rendered) -> list[str]:
    (container,) = containers(rendered.one("StatefulSet", "conveyor-redis"))
    args: list[str] = container["args"]
    return args


def _users(args: list[str]) -> dict[str, list[str]]:
    """The ACL users the server's arguments define: name -> rules."""
    users: dict[str, list[str]] = {}
    for index, arg in enumerate(args):
        if arg == "--user":
            rest = args[index + 1 :]
            end = next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))
            users[rest[0]] = rest[1:end]
    return users


def test_the_services_are_redis_acl_users_without_admin_commands() -> None:
    rendered = render_named("defaults")
    users = _users(_redis_args(rendered))
    assert set(users) == {"api", "worker"}
    for name, rules in users.items():
        assert rules[:4] == ["on", f">$(REDIS_{name.upper()}_PASSWORD)", "~*", "&*"]
        assert rules[4:] == ["+@all", "-@dangerous", "+info"]
    secret = rendered.one("Secret", "conveyor-redis")
    assert set(secret["data"]) == {"redis-password", "redis-api-password", "redis-worker-password"}
    for workload, user in (("conveyor-api", "api"), ("conveyor-worker-default", "worker")):
        env = env_of(next(containers(rendered.one("Deployment", workload))))
        assert env["REDIS_USERNAME"]["value"] == user
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "conveyor-redis",
            "key": f"redis-{user}-password",
        }


def test_without_acl_users_the_services_share_the_default_user() -> None:
    rendered = render({"redis": {"acl": {"enabled": False}}})
    assert _users(_redis_args(rendered)) == {}
    env = env_of(next(containers(rendered.one("Deployment", "conveyor-api"))))
    assert "REDIS_USERNAME" not in env
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"


def test_the_built_in_redis_over_tls() -> None:
    rendered = render_named("hardened")
    args = _redis_args(rendered)
    assert args[args.index("--port") + 1] == "0", "no plain-text port"
    assert args[args.index("--tls-port") + 1] == "6379"
    statefulset = rendered.one("StatefulSet", "conveyor-redis")
    (volume,) = [
        v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    ]
    assert volume["secret"]["secretName"] == "conveyor-redis-tls"
    (container,) = containers(statefulset)
    assert (
        '--tls --cacert "$REDIS_TLS_CA_FILE"' in container["readinessProbe"]["exec"]["command"][-1]
    )
    for workload in ("conveyor-api", "conveyor-worker-default"):
        deployment = rendered.one("Deployment", workload)
        env = env_of(next(containers(deployment)))
        assert env["REDIS_URL"]["value"] == "rediss://conveyor-redis:6379/0"
        assert env["REDIS_TLS_CA_FILE"]["value"] == "/etc/conveyor/redis-tls/ca.crt"
        (ca,) = [
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-tls"
        ]
        # The services get the CA only, never the server's private key.
        assert ca["secret"] == {
            "secretName": "conveyor-redis-tls",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }


def test_redis_tls_needs_its_certificate() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"redis\.tls\.secret"):
        render({"redis": {"tls": {"enabled": True}}})


@pytest.mark.parametrize(
    "values",
    [
        {"redis": {"acl": {"rules": ["+@all", "-@dangerous ~secret"]}}},
        {"redis": {"acl": {"rules": []}}},
        {"networkPolicy": {"egress": {"smtp": {"ports": [25]}}}},
        {"api": {"ingress": {"allowWithoutTLS": True}}},
    ],
)
def test_the_schema_refuses_malformed_hardening_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
