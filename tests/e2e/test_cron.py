"""The cron jobs on a short schedule, with two worker processes: each run
happens once, the digest's numbers match what happened, and cleanup removes
expired documents and keeps fresh ones."""

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import pytest

from tests.e2e.conftest import Stack, running
from tests.support.smtp import Received, SmtpServer

pytestmark = pytest.mark.e2e

OPERATOR = "ops@example.com"
PERIOD_S = 3
# Every PERIOD_S seconds; cleanup a second after each digest.
DIGEST_SCHEDULE = {"second": list(range(0, 60, PERIOD_S))}
CLEANUP_SCHEDULE = {"second": list(range(1, 60, PERIOD_S))}
# A run's id: its queue's tag, then its type and time (keys.job_id_for).
RUN_ID_START = "{arq:queue}send_digest:"
ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)$")


@pytest.fixture
def cron_stack(redis_url: str, log_dir: Path, smtp: SmtpServer) -> Iterator[Stack]:
    with running(
        Stack(
            redis_url,
            log_dir,
            **smtp.env,
            CONVEYOR_DIGEST_TO=OPERATOR,
            CONVEYOR_DIGEST_SCHEDULE=json.dumps(DIGEST_SCHEDULE),
            CONVEYOR_CLEANUP_SCHEDULE=json.dumps(CLEANUP_SCHEDULE),
        )
    ) as stack:
        yield stack


# The folder every service of the test run keeps blobs in (tests/conftest.py).
BLOBS = Path(os.environ["CONVEYOR_BLOBS_URL"].removeprefix("file://"))


def parse_digest(mail: Received) -> tuple[dict[str, tuple[int, int, int]], int]:
    """The table (job type -> complete, failed, dead) and the documents processed."""
    rows: dict[str, tuple[int, int, int]] = {}
    documents = -1
    for line in mail.body.splitlines():
        if match := ROW.match(line.strip()):
            name, *counts = match.groups()
            rows[name] = (int(counts[0]), int(counts[1]), int(counts[2]))
        elif line.startswith("Documents processed:"):
            documents = int(line.split(":")[1])
    assert documents >= 0, mail.body
    return rows, documents


def scheduled_ms(mail: Received) -> int:
    job_id = mail.header("X-Conveyor-Job-Id")
    assert job_id is not None
    assert job_id.startswith(RUN_ID_START), job_id
    return int(job_id.rpartition(":")[2])


def digests(smtp: SmtpServer) -> list[Received]:
    return [m for m in smtp.received if m.recipients == [OPERATOR]]


def upload(stack: Stack, name: str, **form: str) -> str:
    response = stack.http.post(
        "/v1/documents", files={"file": (name, b"Some text. More text.")}, data=form
    )
    assert response.status_code == 202, response.text
    document_id: str = response.json()["document"]["id"]
    return document_id


def wait_until(check: Any, what: str, stack: Stack, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened\n{stack.logs()}")
        time.sleep(0.1)


@pytest.mark.timeout(180)
def test_cron_runs_once_across_two_workers_with_true_numbers(
    cron_stack: Stack, smtp: SmtpServer
) -> None:
    stack = cron_stack
    stack.start_worker()
    stack.start_worker()

    expiring = upload(stack, "old.txt", retention_s="2")
    # Read now: a cleanup may remove the entry before the digest below arrives.
    expired_at_ms = int(
        cast(float, stack.redis.zscore("conveyor:{stats}:documents:expiry", expiring))
    )
    assert expired_at_ms
    fresh = upload(stack, "new.txt")
    flaky = [stack.submit("flaky", {"fail_times": 1})["id"] for _ in range(3)]
    permanent = [stack.submit("permanent", {})["id"] for _ in range(2)]
    for job_id in flaky:
        stack.wait_for_state(job_id, "complete")
    for job_id in permanent:
        stack.wait_for_state(job_id, "dead")
    for document_id in (expiring, fresh):
        document = stack.http.get(f"/v1/documents/{document_id}").json()
        stack.wait_for_state(document["jobs"]["process"], "complete")
    all_done_ms = time.time() * 1000

    # A digest scheduled after everything finished has counted all of it.
    wait_until(
        lambda: any(scheduled_ms(m) > all_done_ms + 500 for m in digests(smtp)),
        "a digest after the work",
        stack,
    )

    # Cleanup after the expiring document's retention ran out.
    def cleaned_after_expiry() -> bool:
        page = stack.http.get("/v1/jobs", params={"state": "complete", "limit": 100}).json()[
            "items"
        ]
        return any(
            job["job_type"] == "cleanup_temp_uploads"
            and int(job["id"].rpartition(":")[2]) > expired_at_ms
            for job in page
        )

    wait_until(cleaned_after_expiry, "a cleanup after the retention", stack)
    time.sleep(PERIOD_S)  # one more period, for a duplicate run to show up

    assert all(worker.alive() for worker in stack.workers)
    mails = digests(smtp)
    runs = Counter(m.header("X-Conveyor-Job-Id") for m in mails)
    assert runs
    assert all(n == 1 for n in runs.values()), runs  # each run mailed once
    slots = sorted(scheduled_ms(m) for m in mails)
    assert all(b - a >= PERIOD_S * 1000 - 50 for a, b in pairwise(slots))
    # Each digest run is one job with one try, on one of the two workers.
    digest_jobs = [stack.job(job_id) for job_id in runs if job_id]
    assert all(job["state"] == "complete" and job["tries"] == 1 for job in digest_jobs)

    totals: dict[str, list[int]] = {}
    documents = 0
    for mail in mails:
        rows, processed = parse_digest(mail)
        documents += processed
        for name, counts in rows.items():
            total = totals.setdefault(name, [0, 0, 0])
            for i, n in enumerate(counts):
                total[i] += n
    assert totals["flaky"] == [3, 3, 0]  # each failed once, then completed
    assert totals["permanent"] == [0, 0, 2]
    assert totals["process_document"] == [2, 0, 0]
    assert documents == 2
    grand = totals.pop("total")
    assert grand == [sum(c[i] for c in totals.values()) for i in range(3)]

    # Expired: the record, its index entry and its blobs gone. Fresh: kept.
    assert not stack.redis.exists(f"conveyor:{{stats}}:document:{expiring}")
    assert stack.redis.zscore("conveyor:{stats}:documents:expiry", expiring) is None
    assert stack.http.get(f"/v1/documents/{expiring}").status_code == 404
    assert not [p for p in (BLOBS / "documents" / expiring).rglob("*") if p.is_file()]
    kept = stack.http.get(f"/v1/documents/{fresh}")
    assert kept.status_code == 200
    assert kept.json()["state"] == "processed"
    assert (BLOBS / "documents" / fresh / "original").is_file()
    assert stack.http.get(f"/v1/documents/{fresh}/content").status_code == 200


def test_a_cron_run_is_listed_as_an_ordinary_job_before_it_starts(cron_stack: Stack) -> None:
    """arq's cron enqueues a run shortly before it is due; from then on it is listed."""
    cron_stack.start_worker()
    waiting: dict[str, str] = {}
    deadline = time.monotonic() + 3 * PERIOD_S
    while not waiting and time.monotonic() < deadline:
        listed = cron_stack.http.get(
            "/v1/jobs", params={"job_type": "send_digest", "limit": 50}
        ).json()["items"]
        waiting = {j["id"]: j["state"] for j in listed if j["state"] in ("deferred", "queued")}
        time.sleep(0.02)
    assert waiting, "no cron run was listed before it started"
    run_id = next(iter(waiting))
    assert run_id.startswith(RUN_ID_START)
    done = cron_stack.wait_for_state(run_id, "complete")
    assert done["tries"] == 1
    assert done["started_at"] >= done["enqueued_at"]
