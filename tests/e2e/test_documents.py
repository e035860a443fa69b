"""The document workflow end to end: real api and worker processes, a real SMTP
server (aiosmtpd) and, where it matters, a real OpenAI-compatible chat server."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Stack, running
from tests.support.chat import SUMMARY_PREFIX, ChatServer
from tests.support.pdf import make_pdf
from tests.support.s3 import s3_server
from tests.support.smtp import Received, SmtpServer

pytestmark = pytest.mark.e2e

UPLOADER = "reader@example.com"
SENTENCES = [
    "Conveyor runs background jobs for web teams.",
    "The api validates input and enqueues jobs into Redis.",
    "Workers take jobs from Redis and run them with retries.",
    "A dead letter set keeps the jobs that gave up, so operators can requeue them.",
    "The weather was pleasant that afternoon.",
    "Jobs report progress, and clients stream it over server-sent events.",
    "Redis holds the queues, the job records and the dead letters of Conveyor.",
]
TEXT = " ".join(SENTENCES)


@pytest.fixture
def flow(redis_url: str, log_dir: Path, smtp: SmtpServer) -> Iterator[Stack]:
    """The api and (once a test starts one) workers that send mail to `smtp`."""
    with running(Stack(redis_url, log_dir, **smtp.env, CONVEYOR_WORKER_LOCK_TTL_S="1")) as stack:
        yield stack


@pytest.fixture(params=["node", pytest.param("cluster", marks=pytest.mark.xdist_group("cluster"))])
def flow_anywhere(
    request: pytest.FixtureRequest, log_dir: Path, smtp: SmtpServer
) -> Iterator[Stack]:
    """As `flow`, on one Redis node, then on the test cluster (3 primaries, 3 replicas)."""
    url = request.getfixturevalue("redis_url" if request.param == "node" else "cluster_url")
    with running(Stack(url, log_dir, **smtp.env, CONVEYOR_WORKER_LOCK_TTL_S="1")) as stack:
        yield stack


def upload(
    stack: Stack, name: str, content: bytes, *, notify: str | None = UPLOADER, **form: str
) -> dict[str, Any]:
    data = {**form, **({"notify_email": notify} if notify else {})}
    response = stack.http.post("/v1/documents", files={"file": (name, content)}, data=data)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/documents/{response.json()['document']['id']}"
    accepted: dict[str, Any] = response.json()
    return accepted


def wait_processed(stack: Stack, document_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        document: dict[str, Any] = stack.http.get(f"/v1/documents/{document_id}").json()
        # Processed, and (when a mail is due) its email job recorded a moment later.
        if document.get("state") == "processed" and (
            document["jobs"]["email"] or not document["notify"]
        ):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"document never processed: {document}\n{stack.logs()}")
        time.sleep(0.05)


def mails_for(smtp: SmtpServer, document_id: str) -> list[Received]:
    return [m for m in smtp.received if m.header("X-Conveyor-Document-Id") == document_id]


def settle_and_count(stack: Stack, smtp: SmtpServer, document: dict[str, Any]) -> list[Received]:
    """Wait for the email job to finish, then a little longer for a stray second mail."""
    email_job = document["jobs"]["email"]
    assert email_job, document
    stack.wait_for_state(email_job, "complete", timeout_s=60)
    time.sleep(1.0)
    return mails_for(smtp, document["id"])


@pytest.mark.parametrize(
    ("name", "content", "content_type", "phrase"),
    [
        (
            "report.pdf",
            make_pdf([SENTENCES[:4], SENTENCES[4:]]),
            "application/pdf",
            "dead letter set",
        ),
        ("notes.txt", TEXT.encode(), "text/plain", "dead letter set"),
        ("notes.md", b"# Notes\n\n" + TEXT.encode(), "text/markdown", "# Notes"),
    ],
    ids=["pdf", "text", "markdown"],
)
def test_upload_is_summarized_and_mailed_once(
    flow: Stack, smtp: SmtpServer, name: str, content: bytes, content_type: str, phrase: str
) -> None:
    flow.start_worker()
    accepted = upload(flow, name, content)
    document_id = accepted["document"]["id"]
    assert accepted["document"]["content_type"] == content_type
    # A fast worker may finish before the answer is written.
    assert accepted["document"]["state"] in ("processing", "processed")
    assert accepted["job"]["job_type"] == "process_document"
    assert accepted["job"]["payload"] == {"document_id": document_id}  # ids only

    document = wait_processed(flow, document_id)
    assert phrase in document["text"]
    assert document["summarizer"] == "extractive"
    # The extractive summary keeps sentences about the text's subject, not the aside.
    assert "Redis" in document["summary"]
    assert "weather" not in document["summary"]
    assert document["processed_at"] is not None
    assert document["jobs"]["process"] == accepted["job"]["id"]
    # The handler marks the document processed before it returns; its job is
    # complete once the end of its try is recorded, a moment later.
    flow.wait_for_state(accepted["job"]["id"], "complete")

    mails = settle_and_count(flow, smtp, document)
    everything = [(m.subject, m.header("X-Conveyor-Document-Id")) for m in smtp.received]
    assert len(mails) == 1, f"{everything}\n{flow.logs()}"
    mail = mails[0]
    assert mail.recipients == [UPLOADER]
    assert mail.subject == f"Your document '{name}' is ready"
    assert document_id in mail.body
    assert document["summary"] in " ".join(mail.body.split()), (document["summary"], mail.body)


def test_smtp_refusing_the_first_attempts_delivers_exactly_once(
    flow: Stack, smtp: SmtpServer
) -> None:
    smtp.mailbox.refuse = 2  # 451: try again later
    flow.start_worker()
    document = wait_processed(flow, upload(flow, "a.txt", TEXT.encode())["document"]["id"])

    mails = settle_and_count(flow, smtp, document)
    assert smtp.mailbox.refused == 2
    assert len(mails) == 1
    email_job = flow.job(document["jobs"]["email"])
    assert email_job["tries"] == 3
    assert email_job["result"]["sent_by_this_try"] is True


def test_smtp_down_then_back_delivers_once(flow: Stack, smtp: SmtpServer) -> None:
    smtp.stop()  # connection refused
    flow.start_worker()
    document = wait_processed(flow, upload(flow, "a.txt", TEXT.encode())["document"]["id"])
    email_job_id = document["jobs"]["email"]
    retrying = flow.wait_for_state(email_job_id, "retrying", timeout_s=30)
    error = retrying["error"]
    assert "Connect" in error["type"] or "connect" in error["message"].lower()

    smtp.start()
    mails = settle_and_count(flow, smtp, document)
    assert len(mails) == 1
    assert flow.job(email_job_id)["tries"] >= 2


def test_smtp_rejecting_the_address_dead_letters_the_mail(flow: Stack, smtp: SmtpServer) -> None:
    smtp.mailbox.refuse, smtp.mailbox.reply = 100, "550 5.1.1 No such user"
    flow.start_worker()
    document = wait_processed(flow, upload(flow, "a.txt", TEXT.encode())["document"]["id"])

    dead = flow.wait_for_state(document["jobs"]["email"], "dead", timeout_s=30)
    assert dead["tries"] == 1  # a 5xx is permanent: no retries
    assert dead["error"]["type"] == "MailRejectedError"
    assert "550" in dead["error"]["message"]
    listed = flow.http.get("/v1/jobs", params={"state": "dead"}).json()["items"]
    assert [job["id"] for job in listed] == [dead["id"]]
    assert mails_for(smtp, document["id"]) == []


def test_worker_killed_in_process_document_ends_processed_with_one_mail(
    flow: Stack, smtp: SmtpServer
) -> None:
    chat = ChatServer().start()
    try:
        chat.hold.clear()  # the summarizer keeps the first try waiting
        env = {"CONVEYOR_SUMMARIZER_URL": chat.url, "CONVEYOR_SUMMARIZER_MODEL": "tiny"}
        worker = flow.start_worker(**env)
        accepted = upload(flow, "a.txt", TEXT.encode())
        document_id = accepted["document"]["id"]
        assert chat.arrived.wait(30), flow.logs()
        assert flow.job(accepted["job"]["id"])["state"] == "in_progress"
        worker.stop(signal.SIGKILL)  # in the middle of process_document
        chat.hold.set()

        flow.start_worker(**env)
        document = wait_processed(flow, document_id)
        mails = settle_and_count(flow, smtp, document)
    finally:
        chat.stop()

    assert document["summary"] == f"{SUMMARY_PREFIX} {len(TEXT.split())} words by tiny."
    assert document["summarizer"] == "chat:tiny"
    assert len(chat.requests) == 2  # the killed try's, and the one that finished
    process_job = flow.job(accepted["job"]["id"])
    assert process_job["state"] == "complete"
    assert process_job["tries"] == 2
    assert len(mails) == 1


def test_mail_to_a_server_that_stays_down_is_dead_lettered_after_the_last_try(
    flow: Stack, smtp: SmtpServer
) -> None:
    smtp.stop()
    flow.start_worker()
    job = flow.submit("quick_mail", {"to_email": UPLOADER, "subject": "Hi", "body": "Hello"})
    dead = flow.wait_for_state(job["id"], "dead", timeout_s=60)
    assert dead["tries"] == 3
    assert dead["error"]["type"] == "SMTPConnectError"
    listed = flow.http.get("/v1/jobs", params={"state": "dead"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]

    # Requeued once the server is back, it is delivered, once.
    smtp.start()
    assert flow.http.post(f"/v1/jobs/{job['id']}/retry").status_code == 202
    flow.wait_for_state(job["id"], "complete", timeout_s=30)
    assert flow.http.post(f"/v1/jobs/{job['id']}/retry").status_code in (404, 409)
    assert len(smtp.wait_for(1, **{"X-Conveyor-Job-Id": job["id"]})) == 1


def test_send_email_delivers_the_welcome_mail(flow: Stack, smtp: SmtpServer) -> None:
    flow.start_worker()
    # Internal: the seed's own code enqueues it, as here (no client can).
    job_id = flow.enqueue(
        "send_email", {"to_email": UPLOADER, "subject": "Welcome", "body": "Hi Ada"}
    )
    done = flow.wait_for_state(job_id, "complete")
    assert done["result"]["sent_by_this_try"] is True
    mails = smtp.wait_for(1, **{"X-Conveyor-Job-Id": done["id"]})
    assert [m.subject for m in mails] == ["Welcome"]
    assert mails[0].body.strip() == "Hi Ada"


@pytest.mark.parametrize("fault", ["tampered", "missing"])
def test_a_changed_or_missing_file_fails_its_document_for_good(
    flow: Stack, smtp: SmtpServer, fault: str
) -> None:
    """The worker checks a document's bytes against its record: a file changed
    in the store (or gone) is never summarized, and no retry is spent on it."""
    accepted = upload(flow, "notes.txt", TEXT.encode())  # no worker yet: nothing read
    document_id = accepted["document"]["id"]
    folder = Path(urlsplit(os.environ["CONVEYOR_BLOBS_URL"]).path)
    blob = folder / "documents" / document_id / "original"
    if fault == "tampered":  # the same size, one byte other
        blob.write_bytes(blob.read_bytes().replace(b"Redis", b"Redix", 1))
    else:
        blob.unlink()

    flow.start_worker()
    dead = flow.wait_for_state(accepted["job"]["id"], "dead")
    assert dead["tries"] == 1  # permanent: its retries were not spent
    assert dead["error"]["type"] == "PermanentJobError"
    words = "was changed" if fault == "tampered" else "is gone"
    assert f"document {document_id} {words}" in dead["error"]["message"]
    document = flow.http.get(f"/v1/documents/{document_id}").json()
    assert (document["state"], document["summary"], document["jobs"]["email"]) == (
        "failed",
        None,
        None,
    )
    assert mails_for(smtp, document_id) == []


def test_services_whose_store_cannot_be_opened_start_and_run_other_jobs(
    redis_url: str, log_dir: Path
) -> None:
    """The chart's defaults without blobs.url: a folder no pod may make. The
    worker still starts (the seed's resources open) and runs jobs; uploads are
    a 503 problem, and the logs say what to set."""
    unusable = {"CONVEYOR_BLOBS_URL": "file:///proc/conveyor-blobs"}
    with running(Stack(redis_url, log_dir, **unusable), workers=1) as stack:
        job = stack.submit("create_task", {"sleep_s": 0})
        assert stack.wait_for_state(job["id"], "complete")["state"] == "complete"
        refused = stack.http.post("/v1/documents", files={"file": ("a.txt", TEXT.encode())})
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        said = "the blob store cannot be opened (CONVEYOR_BLOBS_URL"
        assert all(said in s.output() for s in (stack.api, *stack.workers)), stack.logs()


def test_the_document_flow_over_an_s3_store_with_direct_upload_and_download(
    redis_url: str, log_dir: Path, smtp: SmtpServer
) -> None:
    """The api and the worker as processes on one S3-protocol store (moto's
    server): a presigned PUT straight to the store, registered, summarized and
    mailed; the download a presigned GET of the same bytes."""
    with (
        s3_server() as s3,
        running(Stack(redis_url, log_dir, **smtp.env, **s3.environment("e2e")), workers=1) as stack,
    ):
        started = stack.http.post("/v1/documents/uploads")
        assert started.status_code == 201, started.text
        upload_ = started.json()
        httpx.put(upload_["url"], content=TEXT.encode(), timeout=10).raise_for_status()
        registered = stack.http.post(
            upload_["register_url"], json={"name": "notes.txt", "notify_email": UPLOADER}
        )
        assert registered.status_code == 202, registered.text
        document = wait_processed(stack, registered.json()["document"]["id"])
        assert "Redis" in document["summary"]
        mails = settle_and_count(stack, smtp, document)
        assert [m.recipients for m in mails] == [[UPLOADER]]
        download = stack.http.get(f"/v1/documents/{document['id']}/content")
        assert download.status_code == 307
        assert httpx.get(download.headers["location"], timeout=10).content == TEXT.encode()
        # Redis holds the record; the bytes and the text are objects in the bucket.
        assert stack.redis.keys(f"conveyor:{{stats}}:document:{document['id']}*") == [
            f"conveyor:{{stats}}:document:{document['id']}".encode()
        ]


# A long document: five parts, each on its own subject, each about 900 characters.
SUBJECTS = ["Redis", "workers", "retries", "tracing", "mail"]
LONG_TEXT = "\n\n".join(
    " ".join(
        f"Part {n} is about {subject}: {subject} matters in sentence {i} of part {n}, "
        f"and {subject} comes up again here."
        for i in range(9)
    )
    for n, subject in enumerate(SUBJECTS)
)


def test_a_long_document_is_summarized_in_parallel_chunks_then_combined_and_mailed_once(
    flow_anywhere: Stack, smtp: SmtpServer
) -> None:
    flow = flow_anywhere
    # Chunks of at most 1,000 characters (the smallest setting): five or more.
    flow.start_worker(CONVEYOR_DOCUMENTS_CHUNK_CHARS="1000")
    accepted = upload(flow, "long.txt", LONG_TEXT.encode())
    document_id = accepted["document"]["id"]
    document = wait_processed(flow, document_id)

    chunks = document["chunks"]
    assert chunks == len(LONG_TEXT) // 1000 + 1, document
    group_id = document["jobs"]["group"]
    process = flow.wait_for_state(accepted["job"]["id"], "complete")
    assert process["result"] == {"document_id": document_id, "group_id": group_id, "chunks": chunks}

    # The fan-out: one member per chunk, every one complete, each a part's summary, in order.
    group = flow.http.get(f"/v1/groups/{group_id}", params={"limit": 50}).json()
    assert (group["state"], group["total"], group["counts"]["complete"]) == ("done", chunks, chunks)
    assert group["parent_id"] == accepted["job"]["id"]
    members = [flow.job(m["id"]) for m in group["members"]]
    assert {m["job_type"] for m in members} == {"summarize_chunk"}
    assert [m["result"]["index"] for m in members] == list(range(chunks))
    assert sum(m["result"]["chars"] for m in members) == len(LONG_TEXT)
    assert "Part 0 is about Redis" in members[0]["result"]["summary"]
    assert "Part 4 is about mail" in members[-1]["result"]["summary"]

    # The continuation combined the chunks' summaries into the document's.
    combined = flow.wait_for_state(f"{group_id}.then", "complete")
    assert combined["job_type"] == "combine_summaries"
    assert combined["result"]["chunks"] == chunks
    assert combined["result"]["summary"] == document["summary"]
    pieces = " ".join(m["result"]["summary"] for m in members)
    sentences = [s for s in document["summary"].split(". ") if s]
    assert len(sentences) > 1
    assert all(s.rstrip(".") in pieces for s in sentences), (document["summary"], pieces)
    assert document["text"] == LONG_TEXT

    # The workflow, read from the job that started it.
    tree = flow.http.get(f"/v1/workflows/{accepted['job']['id']}").json()
    assert tree["root"]["id"] == accepted["job"]["id"]
    assert [g["id"] for g in tree["groups"]] == [group_id]

    mails = settle_and_count(flow, smtp, document)
    assert len(mails) == 1
    assert flow.job(document["jobs"]["email"])["parent_id"] == f"{group_id}.then"
    assert document["summary"] in " ".join(mails[0].body.split())


def test_a_worker_killed_while_chunks_are_summarized_still_ends_with_one_summary_and_one_mail(
    flow: Stack, smtp: SmtpServer
) -> None:
    chat = ChatServer().start()
    try:
        chat.hold.clear()  # the summarizer keeps the chunks' first tries waiting
        env = {
            "CONVEYOR_SUMMARIZER_URL": chat.url,
            "CONVEYOR_SUMMARIZER_MODEL": "tiny",
            "CONVEYOR_DOCUMENTS_CHUNK_CHARS": "1000",
        }
        worker = flow.start_worker(**env)
        accepted = upload(flow, "long.txt", LONG_TEXT.encode())
        document_id = accepted["document"]["id"]
        assert chat.arrived.wait(30), flow.logs()
        worker.stop(signal.SIGKILL)  # with chunks in the middle of their summaries
        chat.hold.set()

        flow.start_worker(**env)
        document = wait_processed(flow, document_id, timeout_s=60)
        mails = settle_and_count(flow, smtp, document)
    finally:
        chat.stop()

    group_id = document["jobs"]["group"]
    group = flow.http.get(f"/v1/groups/{group_id}", params={"limit": 50}).json()
    assert (group["state"], group["counts"]["complete"]) == ("done", document["chunks"])
    members = [flow.job(m["id"]) for m in group["members"]]
    assert max(m["tries"] for m in members) == 2  # the killed tries ran again
    pieces = " ".join(m["result"]["summary"] for m in members)
    assert document["summary"] == f"{SUMMARY_PREFIX} {len(pieces.split())} words by tiny."
    combined = flow.job(f"{group_id}.then")
    assert (combined["state"], combined["tries"]) == ("complete", 1)
    assert len(mails) == 1
