"""Redis with a password, and with TLS (a certificate made by the test), for
the api and the worker as real processes: a job goes all the way through."""

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import Stack
from tests.support.secure_redis import Certificates, make_certificates, secure_redis

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-redis-pass/with:odd@chars"


def run_a_job(stack: Stack) -> None:
    stack.start_api()
    stack.start_worker()
    job = stack.submit("create_task", {"sleep_s": 0.01})
    stack.wait_for_state(job["id"], "complete")
    logs = stack.api.output() + "".join(w.output() for w in stack.workers)
    assert PASSWORD not in logs


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture
def stacks(log_dir: Path) -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.close()


def test_a_password_from_redis_password_reaches_both_services(
    tmp_path: Path, log_dir: Path, stacks: list[Stack]
) -> None:
    with secure_redis(tmp_path, PASSWORD) as port:
        url = f"redis://127.0.0.1:{port}/0"
        stacks.append(stack := Stack(url, log_dir, REDIS_PASSWORD=PASSWORD))
        run_a_job(stack)
        # REDIS_PASSWORD overrides a password in the URL: a wrong one is refused.
        in_url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0"
        (log_dir / "wrong").mkdir(exist_ok=True)
        stacks.append(wrong := Stack(in_url, log_dir / "wrong", REDIS_PASSWORD="not-it"))
        wrong.api.start(wait_ready=False)
        wrong.api.wait_for("/readyz", status=503)


def test_tls_with_a_ca_file_and_a_password(
    tmp_path: Path, log_dir: Path, certs: Certificates, stacks: list[Stack]
) -> None:
    with secure_redis(tmp_path, PASSWORD, certs) as port:
        url = f"rediss://localhost:{port}/0"
        env = {"REDIS_PASSWORD": PASSWORD, "REDIS_TLS_CA_FILE": str(certs.ca_file)}
        stacks.append(stack := Stack(url, log_dir, **env))
        run_a_job(stack)

        # Without the CA, the server's certificate is not trusted: no connection.
        (log_dir / "untrusted").mkdir(exist_ok=True)
        stacks.append(untrusted := Stack(url, log_dir / "untrusted", REDIS_PASSWORD=PASSWORD))
        untrusted.api.start(wait_ready=False)
        untrusted.api.wait_for("/readyz", status=503)
