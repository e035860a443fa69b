"""The README: short, its links and picture current, and its commands working as
written, from a fresh clone.

A shell block the README marks `<!-- runnable -->` is run; one marked
`<!-- runnable: serves -->` (`make run`) is started and left serving while the
others run, one after the other in one shell, as a person would type them in
a second terminal.
"""

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.local.redis_server import free_port
from conveyor_core.local.run import LOCAL_BLOBS
from tests.support.processes import REPO_ROOT
from tests.support.s3 import S3Server, s3_server
from tests.support.screenshot import README_IMAGE, readme_image_is_current

README = REPO_ROOT / "README.md"
MAX_README_BYTES = 8 * 1024
BLOCK = re.compile(r"<!-- runnable(?P<serves>: serves)? -->\n```sh\n(?P<code>.*?)```", re.DOTALL)
LINK = re.compile(r"\]\((?!https?://|#)(?P<target>[^)#\s]+)")


@dataclass(frozen=True)
class Block:
    code: str
    serves: bool


def runnable_blocks(text: str) -> list[Block]:
    return [Block(m.group("code"), bool(m.group("serves"))) for m in BLOCK.finditer(text)]


def test_the_readme_is_short() -> None:
    assert README.stat().st_size <= MAX_README_BYTES, "move detail into docs/"


def test_every_link_and_picture_in_the_readme_exists() -> None:
    targets = LINK.findall(README.read_text())
    assert targets
    missing = [t for t in targets if not (REPO_ROOT / t).exists()]
    assert missing == []


def test_the_readme_picture_shows_the_current_status_page() -> None:
    assert f"]({README_IMAGE.relative_to(REPO_ROOT).as_posix()})" in README.read_text()
    assert readme_image_is_current(), (
        "the status page changed since docs/images/status-page.png was taken: run "
        "tests/e2e/test_status_page.py, which takes it anew, and commit the picture"
    )


def test_the_readme_marks_make_run_and_the_tour_as_runnable() -> None:
    blocks = runnable_blocks(README.read_text())
    assert [b.code.split()[:2] for b in blocks if b.serves] == [["make", "run"]]
    assert len([b for b in blocks if not b.serves]) >= 5


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A clone of the committed tree, as a newcomer gets it. It borrows the
    pinned uv (`.tools/`) so nothing but the lock's packages is fetched, and
    those come from uv's cache."""
    clone = tmp_path / "conveyor"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(clone)],
        check=True,
        timeout=120,
    )
    (clone / ".tools" / "bin").mkdir(parents=True)
    (clone / ".tools" / "bin" / "uv").symlink_to(REPO_ROOT / ".tools" / "bin" / "uv")
    return clone


def wait_for_banner(process: subprocess.Popen[str], log: list[str], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        log.append(line)
        match = re.search(r"api key\s+(cvk_dev_\S+)", line)
        if match:
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise AssertionError("make run printed no key:\n" + "".join(log))


@pytest.fixture(params=["folder", "s3"])
def blob_store(request: pytest.FixtureRequest) -> Iterator[S3Server | None]:
    """Where `make run` keeps uploaded bytes: its default folder, or an
    S3-protocol server (moto's, on loopback) named by CONVEYOR_BLOBS_*."""
    if request.param == "folder":
        yield None
        return
    with s3_server() as server:
        yield server


def stored_documents(clone: Path, s3: S3Server | None) -> list[str]:
    """The document blobs `make run` wrote, wherever its store is."""
    if s3 is None:
        folder = clone / LOCAL_BLOBS
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    async def listed() -> list[str]:
        settings = BlobSettings(
            url=f"s3://{s3.bucket}",
            endpoint=s3.endpoint,
            region="us-east-1",
            path_style=True,
            access_key_id="testing",
            secret_access_key=SecretStr("testing"),
        )
        return sorted([i.key async for i in BlobStore.from_settings(settings).list("")])

    return asyncio.run(listed())


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_readme_commands_work_from_a_fresh_clone(
    fresh_clone: Path, log_dir: Path, blob_store: S3Server | None
) -> None:
    blocks = runnable_blocks((fresh_clone / "README.md").read_text())
    (serves,) = [b for b in blocks if b.serves]
    tour = "\n".join(b.code for b in blocks if not b.serves)
    api_port = free_port()
    # Moved ports only, since tests run side by side; everything else as a newcomer has it.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONVEYOR_", "REDIS_", "VIRTUAL_ENV", "UV_"))
    }
    env.update(
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_WORKER_HEALTH_PORT=str(free_port()),
        CONVEYOR_MAIL_CATCHER_PORT=str(free_port()),
        CONVEYOR_API_TASK_SLEEP_MIN_S="0.1",
        CONVEYOR_API_TASK_SLEEP_MAX_S="0.5",
    )
    if blob_store is not None:
        env.update(blob_store.environment())
    server = subprocess.Popen(
        ["bash", "-c", serves.code],
        cwd=fresh_clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    try:
        key = wait_for_banner(server, log, timeout_s=400)
        api = f"http://localhost:{api_port}"
        assert httpx.get(f"{api}/ui/").status_code == 200
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", tour],
            cwd=fresh_clone,
            env={**env, "API": api, "KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        (log_dir / "readme-tour.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout + result.stderr
        # The workflow's mail reached the catcher; the bounced job died and was requeued.
        assert "ada@example.com" in result.stdout
        assert "is ready" in result.stdout
        assert '"state":"dead"' in result.stdout
        assert '"requeues":1' in result.stdout or '"state":"queued"' in result.stdout
        # The tour's two uploads, each its file and its text, are in the store it was given.
        documents = [k for k in stored_documents(fresh_clone, blob_store) if "documents/" in k]
        assert len([k for k in documents if k.endswith("/original")]) == 2, documents
        assert len([k for k in documents if k.endswith("/text")]) == 2, documents
        if blob_store is not None:
            assert stored_documents(fresh_clone, None) == []  # nothing in the folder
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if server.stdout is not None:
            log.append(server.stdout.read())
            server.stdout.close()
        (log_dir / "readme-make-run.log").write_text("".join(log))
