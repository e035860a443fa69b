"""A recipient the mail server refuses: its address is masked wherever the
refusal is shown or recorded (the job's error, the worker's log, the exported
span), and a search for it finds nothing. Real processes: the api, a worker,
an SMTP server that refuses the address as a real one does (550, naming it),
an OTLP receiver."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor_core import keys
from tests.e2e.conftest import Stack, traced_running
from tests.support.otlp import Collector
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

# In an allowed domain (tests/support/processes.py), so the server is asked.
REFUSED = "ada.lovelace@example.com"


@pytest.fixture
def refusing(redis_url: str, log_dir: Path) -> Iterator[tuple[Stack, Collector]]:
    smtp = SmtpServer().start()
    smtp.mailbox.unknown.add(REFUSED)
    try:
        with traced_running(redis_url, log_dir, **smtp.env) as traced:
            yield traced
    finally:
        smtp.stop()


def test_a_refused_recipient_is_masked_in_the_error_the_worker_log_and_the_span(
    refusing: tuple[Stack, Collector],
) -> None:
    stack, collector = refusing
    job_id = stack.enqueue("send_email", {"to_email": REFUSED, "subject": "Hi", "body": "Hello"})
    job = stack.wait_for_state(job_id, "dead")  # a 550 is final: no retry

    # The job api: the error says what happened, with the address masked.
    error = job["error"]
    assert error["type"] == "MailRejectedError"
    assert "550" in error["message"], error
    assert "***" in error["message"], error
    assert job["payload"]["to_email"] == "***"
    listed = stack.http.get("/v1/jobs", params={"state": "dead"}).json()["items"]
    assert [j["error"]["message"] for j in listed] == [error["message"]]
    # Stored masked too (the payload keeps the address: a requeue sends the mail).
    stored = stack.redis.hget(keys.job_key(job_id), "error")
    assert isinstance(stored, bytes)
    assert b"***" in stored
    assert b"lovelace" not in stored
    # Nor can a search on the error's text tell whose mail it was.
    for needle in ("lovelace", "example.com", REFUSED):  # the issue found jobs by domain
        found = stack.http.get("/v1/jobs", params={"q": needle})
        assert found.status_code == 200, found.text
        assert found.json()["items"] == [], needle

    # The worker's log: the job's end (and any other line) carries the refusal, masked.
    deadline = time.monotonic() + 10
    while not [
        line
        for line in stack.log_lines(stack.workers[0])
        if line.get("job_id") == job_id and line["message"] == "job end"
    ]:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    worker_lines = [json.dumps(line) for line in stack.log_lines(stack.workers[0])]
    refusal_lines = [line for line in worker_lines if "MailRejectedError" in line]
    assert refusal_lines, worker_lines[-5:]
    assert all("***" in line for line in refusal_lines)

    # The span: the job's consumer span records the exception, masked.
    deadline = time.monotonic() + 20
    while not (
        failed := [
            s
            for s in collector.find(kind="SPAN_KIND_CONSUMER")
            if any("MailRejectedError" in json.dumps(e, default=str) for e in s.events)
        ]
    ):
        assert time.monotonic() < deadline, [(s.name, s.kind) for s in collector.spans]
        time.sleep(0.05)
    assert "***" in json.dumps([e for s in failed for e in s.events], default=str)

    # And nowhere at all: not in any log line of either service, nor any span.
    logs = stack.api.output() + stack.workers[0].output()
    spans = repr([(s.attributes, s.events) for s in collector.spans])
    for leak in (REFUSED, "lovelace"):
        assert leak not in logs
        assert leak not in spans
