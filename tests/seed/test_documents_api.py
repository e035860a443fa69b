"""`/v1/documents` against a real Redis: good uploads are stored and enqueued;
bad ones get problem+json and leave nothing behind."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Reads, Scope
from conveyor_core import Call
from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.catalog import DEFAULT_QUEUE, load_catalog
from conveyor_core.groups import start_group
from conveyor_core.store import JobStore
from conveyor_seed import (
    COMBINE_SUMMARIES,
    PROCESS_DOCUMENT,
    SUMMARIZE_CHUNK,
    DocumentChunk,
    DocumentRef,
)
from conveyor_seed.documents import DocumentStore
from conveyor_seed.settings import DocumentSettings
from tests.api.conftest import make_app, serve
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer
from tests.support.pdf import make_pdf
from tests.support.s3 import s3_server

MAX_BYTES = 64 * 1024
# Keys that read only their own documents; one that may have one job outstanding.
OWN_A, OWN_B, ONE = "cvk_docs_a", "cvk_docs_b", "cvk_docs_one"
# A key that may keep this many bytes in the blob store.
BYTES_KEY, BYTES_QUOTA = "cvk_docs_bytes", 10_000
DOCUMENT_SCOPES = [Scope.DOCUMENTS_WRITE, Scope.DOCUMENTS_READ]
KEYS = [
    api_key(TEST_KEY_NAME, TEST_KEY),
    api_key("docs-a", OWN_A, DOCUMENT_SCOPES, reads=Reads.OWN),
    api_key("docs-b", OWN_B, DOCUMENT_SCOPES, reads=Reads.OWN),
    api_key("docs-one", ONE, DOCUMENT_SCOPES, max_outstanding_jobs=1),
    api_key("docs-bytes", BYTES_KEY, DOCUMENT_SCOPES, max_stored_bytes=BYTES_QUOTA),
]


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def blob_env(request: pytest.FixtureRequest, blob_dir: Path) -> Iterator[dict[str, str]]:
    """The blob store the api uses: a folder, (parametrized "s3") an S3 server,
    or ("unusable") a folder the api cannot make."""
    if getattr(request, "param", "file") == "s3":
        with s3_server() as server:
            yield server.environment(prefix="api-tests")
    elif getattr(request, "param", "file") == "unusable":
        yield {"CONVEYOR_BLOBS_URL": "file:///proc/conveyor-blobs"}
    else:
        yield {"CONVEYOR_BLOBS_URL": f"file://{blob_dir}"}


@pytest.fixture
async def client(
    redis_url: str, blob_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    # The seed's routes read their settings from the environment, in the api.
    for name, value in blob_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CONVEYOR_DOCUMENTS_MAX_BYTES", str(MAX_BYTES))
    monkeypatch.setenv("CONVEYOR_DOCUMENTS_RETENTION_S", "3600")
    monkeypatch.setenv("CONVEYOR_DOCUMENTS_TEXT_MAX_CHARS", "1000")
    monkeypatch.setenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", "example.com")
    assert DocumentSettings().max_bytes == MAX_BYTES
    async with serve(make_app(redis_url, keys=KEYS)) as c:
        yield c


async def post(
    client: httpx.AsyncClient, files: dict[str, Any] | None, **data: str
) -> httpx.Response:
    return await client.post("/v1/documents", files=files, data=data)


async def assert_nothing_stored(redis: ArqRedis, blob_dir: Path) -> None:
    assert await redis.keys("conveyor:{stats}:document*") == []
    assert await redis.zcard(DEFAULT_QUEUE) == 0  # nothing enqueued
    assert [p for p in blob_dir.rglob("*") if p.is_file()] == []  # no bytes either


async def test_upload_stores_the_document_and_enqueues_its_job(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    pdf = make_pdf([["Hello."]])
    response = await post(
        client, {"file": ("dir/report.pdf", pdf)}, notify_email="a@example.com", retention_s="60"
    )
    assert response.status_code == 202, response.text
    body = response.json()
    document, job = body["document"], body["job"]
    assert document["name"] == "report.pdf"  # the base name only
    assert document["content_type"] == "application/pdf"
    assert document["size_bytes"] == len(pdf)
    assert document["state"] == "processing"
    assert document["notify"] is True
    assert "notify_email" not in document  # the address is not shown back
    assert document["jobs"] == {"process": job["id"], "email": None, "group": None}
    assert job["job_type"] == "process_document"
    assert job["state"] == "queued"
    assert job["payload"] == {"document_id": document["id"]}
    assert job["idempotency_key"] == document["id"]
    assert await redis.zscore(DEFAULT_QUEUE, job["id"]) is not None
    # Redis holds the record alone; the bytes come back from the blob store, whole.
    assert await redis.keys(f"conveyor:{{stats}}:document:{document['id']}*") == [
        f"conveyor:{{stats}}:document:{document['id']}".encode()
    ]
    download = await client.get(f"/v1/documents/{document['id']}/content")
    assert download.status_code == 200
    assert download.content == pdf
    assert download.headers["content-type"] == "application/pdf"
    ttl_s = await redis.ttl(f"conveyor:{{stats}}:document:{document['id']}")
    assert 60 < ttl_s <= 60 + 86_400  # the asked-for retention, plus the backstop

    read = await client.get(f"/v1/documents/{document['id']}")
    assert read.status_code == 200
    assert read.json()["state"] == "processing"
    assert read.json()["text"] is None


async def test_read_shows_text_bounded(
    client: httpx.AsyncClient, redis: ArqRedis, blob_dir: Path
) -> None:
    response = await post(client, {"file": ("a.txt", b"x" * 5000)})
    document_id = response.json()["document"]["id"]
    documents = DocumentStore(
        redis, BlobStore.from_settings(BlobSettings(url=f"file://{blob_dir}"))
    )
    processed = await documents.mark_processed(
        document_id, text="y" * 1000, text_truncated=1, summary="s"
    )
    assert processed is True
    full = (await client.get(f"/v1/documents/{document_id}")).json()
    assert full["state"] == "processed"
    assert len(full["text"]) == 1000  # at most text_max_chars
    assert full["text_truncated"] is True
    short = (await client.get(f"/v1/documents/{document_id}", params={"text_chars": 10})).json()
    assert short["text"] == "y" * 10
    assert short["text_chars"] == 1000


@pytest.mark.parametrize(
    ("files", "data", "status", "detail"),
    [
        ({"file": ("a.txt", b"")}, {}, 422, "empty"),
        ({"file": ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00")}, {}, 415, "neither a PDF nor"),
        ({"file": ("a.pdf", b"just text")}, {}, 415, "not one"),
        ({"file": ("a.pdf", b"%PDF-1.7\n1 0 obj garbage")}, {}, 422, "PDF cannot be read"),
        ({"file": ("a.txt", b"x" * (MAX_BYTES + 1))}, {}, 413, "limit"),
        (None, {"notify_email": "a@example.com"}, 422, "file"),
        ({"file": ("a.txt", b"text")}, {"notify_email": "not an address"}, 422, "notify_email"),
        # A summary mail outside the allowed domains: refused before anything is stored.
        (
            {"file": ("a.txt", b"text")},
            {"notify_email": "a@elsewhere.example"},
            422,
            "notify_email",
        ),
        ({"file": ("a.txt", b"text")}, {"retention_s": "0"}, 422, "retention_s"),
    ],
)
async def test_bad_uploads_get_problems_and_store_nothing(
    client: httpx.AsyncClient,
    redis: ArqRedis,
    blob_dir: Path,
    files: dict[str, Any] | None,
    data: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = await post(client, files, **data)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert detail in problem["detail"]
    await assert_nothing_stored(redis, blob_dir)


async def test_a_body_far_over_the_limit_is_refused_before_reading(
    client: httpx.AsyncClient, redis: ArqRedis, blob_dir: Path
) -> None:
    response = await post(client, {"file": ("a.txt", b"x" * (MAX_BYTES + 128 * 1024))})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    await assert_nothing_stored(redis, blob_dir)


async def test_other_routes_keep_the_general_body_limit(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs/create_task", content=b"x" * (1_048_576 + 1))
    assert response.status_code == 413


async def test_unknown_document_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/documents/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "nope" in response.json()["detail"]


async def test_a_document_whose_job_died_reads_as_failed(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    body = (await post(client, {"file": ("a.txt", b"text")})).json()
    store = JobStore(redis)
    claim = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 10}
    claimed = (await store.claim(PROCESS_DOCUMENT.queue, 1, **claim)).jobs
    assert [c.job_id for c in claimed] == [body["job"]["id"]]
    assert await store.dead(PROCESS_DOCUMENT, body["job"]["id"], "{}")
    document = (await client.get(f"/v1/documents/{body['document']['id']}")).json()
    assert document["state"] == "failed"
    assert document["summary"] is None


async def test_a_long_document_whose_chunk_died_reads_as_failed(
    client: httpx.AsyncClient, redis: ArqRedis, blob_dir: Path
) -> None:
    body = (await post(client, {"file": ("a.txt", b"text")})).json()
    document_id = body["document"]["id"]
    store = JobStore(redis, load_catalog(["conveyor_seed"]))
    chunk = Call(SUMMARIZE_CHUNK, DocumentChunk(document_id=document_id, index=0, start=0, end=4))
    group = await start_group(
        store, [chunk], then=Call(COMBINE_SUMMARIES, DocumentRef(document_id=document_id))
    )
    documents = DocumentStore(
        redis, BlobStore.from_settings(BlobSettings(url=f"file://{blob_dir}"))
    )
    assert await documents.update(document_id, group_id=group.id)
    read = (await client.get(f"/v1/documents/{document_id}")).json()
    assert (read["state"], read["jobs"]["group"]) == ("processing", group.id)

    claim = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 10}
    claimed = (await store.claim(SUMMARIZE_CHUNK.queue, 2, **claim)).jobs
    assert group.member_id(0) in [c.job_id for c in claimed]
    assert await store.dead(SUMMARIZE_CHUNK, group.member_id(0), "{}")
    read = (await client.get(f"/v1/documents/{document_id}")).json()
    assert (read["state"], read["summary"]) == ("failed", None)


async def test_a_malformed_multipart_body_is_a_documented_400_problem(
    client: httpx.AsyncClient, redis: ArqRedis, blob_dir: Path
) -> None:
    """Found by schemathesis: a body that is not multipart at all."""
    boundary = "fc9131ad623cd5e81267244a6dc45243"
    response = await client.post(
        "/v1/documents",
        content=f"--{boundary}\r\n6.8e+44--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    documented = (await client.get("/openapi.json")).json()["paths"]["/v1/documents"]["post"]
    assert "application/problem+json" in documented["responses"]["400"]["content"]
    await assert_nothing_stored(redis, blob_dir)


async def test_a_folder_store_takes_uploads_through_the_api_only(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/documents/uploads")
    assert response.status_code == 409
    assert "POST /v1/documents" in response.json()["detail"]


@pytest.mark.parametrize("blob_env", ["s3"], indirect=True)
async def test_direct_upload_with_a_presigned_url_then_register(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    """The file goes straight to the S3 store; the api then checks and registers
    it, and downloads are presigned GETs."""
    started = await client.post("/v1/documents/uploads")
    assert started.status_code == 201, started.text
    upload = started.json()
    text = b"Straight to the store. The api never saw these bytes come in."
    async with httpx.AsyncClient() as outside:
        (await outside.put(upload["url"], content=text)).raise_for_status()
    registered = await client.post(upload["register_url"], json={"name": "notes.txt"})
    assert registered.status_code == 202, registered.text
    document = registered.json()["document"]
    assert (document["size_bytes"], document["content_type"]) == (len(text), "text/plain")
    download = await client.get(f"/v1/documents/{document['id']}/content")
    assert download.status_code == 307
    async with httpx.AsyncClient() as outside:
        assert (await outside.get(download.headers["location"])).content == text
    again = await client.post(upload["register_url"], json={"name": "notes.txt"})
    assert again.status_code == 404  # registered once: the upload is gone


@pytest.mark.parametrize("blob_env", ["s3"], indirect=True)
async def test_a_direct_upload_that_is_not_a_document_is_refused_and_removed(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    upload = (await client.post("/v1/documents/uploads")).json()
    async with httpx.AsyncClient() as outside:
        (await outside.put(upload["url"], content=b"\x89PNG\r\n\x1a\n")).raise_for_status()
    refused = await client.post(upload["register_url"], json={"name": "a.png"})
    assert refused.status_code == 415
    assert refused.headers["content-type"] == "application/problem+json"
    assert await redis.keys("conveyor:{stats}:document*") == []
    again = await client.post(upload["register_url"], json={"name": "a.png"})
    assert again.status_code == 404


async def test_the_outside_domain_refusal_names_the_field(client: httpx.AsyncClient) -> None:
    response = await post(client, {"file": ("a.txt", b"text")}, notify_email="a@elsewhere.example")
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "notify_email"
    assert "'elsewhere.example'" in error["detail"]
    assert "CONVEYOR_MAIL_ALLOWED_DOMAINS" in error["detail"]


async def test_an_own_jobs_key_reads_only_its_own_documents(client: httpx.AsyncClient) -> None:
    def upload(key: str) -> Any:
        return client.post("/v1/documents", files={"file": ("a.txt", b"text")}, headers=bearer(key))

    mine = (await upload(OWN_A)).json()
    theirs = (await upload(OWN_B)).json()["document"]["id"]
    assert mine["job"]["submitted_by"] == "docs-a"

    read = await client.get(f"/v1/documents/{mine['document']['id']}", headers=bearer(OWN_A))
    assert read.status_code == 200
    other = await client.get(f"/v1/documents/{theirs}", headers=bearer(OWN_A))
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
    # A key that reads everything reads both; the own key reads its job too.
    assert (await client.get(f"/v1/documents/{theirs}")).status_code == 200
    job = await client.get(f"/v1/jobs/{mine['job']['id']}")
    assert job.json()["submitted_by"] == "docs-a"


async def test_an_upload_over_the_keys_quota_is_refused_and_kept_nowhere(
    client: httpx.AsyncClient, redis: ArqRedis, blob_dir: Path
) -> None:
    files = {"file": ("a.txt", b"text")}
    first = await client.post("/v1/documents", files=files, headers=bearer(ONE))
    assert first.status_code == 202
    refused = await client.post("/v1/documents", files=files, headers=bearer(ONE))
    assert refused.status_code == 429
    assert refused.json()["field"] == "max_outstanding_jobs"
    assert "retry-after" in refused.headers
    # Only the first document is kept.
    stored = {
        k.decode() for k in await redis.keys("conveyor:{stats}:document:*") if b":content" not in k
    }
    assert stored == {f"conveyor:{{stats}}:document:{first.json()['document']['id']}"}
    # Its bytes too: the refused upload's blob went with its record.
    blobs = [p.relative_to(blob_dir).as_posix() for p in blob_dir.rglob("*") if p.is_file()]
    assert blobs == [f"documents/{first.json()['document']['id']}/original"]


async def test_uploads_over_the_keys_quota_of_stored_bytes_are_refused(
    client: httpx.AsyncClient,
) -> None:
    text = b"word " * (BYTES_QUOTA // 10)  # half the quota
    files = {"file": ("a.txt", text)}
    first = await client.post("/v1/documents", files=files, headers=bearer(BYTES_KEY))
    assert first.status_code == 202, first.text
    second = await client.post("/v1/documents", files=files, headers=bearer(BYTES_KEY))
    assert second.status_code == 202, second.text
    refused = await client.post("/v1/documents", files=files, headers=bearer(BYTES_KEY))
    assert refused.status_code == 429
    assert refused.json()["field"] == "max_stored_bytes"
    assert int(refused.headers["retry-after"]) >= 1
    whole = {"file": ("b.txt", b"word " * (BYTES_QUOTA // 4))}
    too_large = await client.post("/v1/documents", files=whole, headers=bearer(BYTES_KEY))
    assert too_large.status_code == 413
    assert too_large.json()["field"] == "max_stored_bytes"
    # Other keys store on.
    assert (await client.post("/v1/documents", files=files)).status_code == 202


@pytest.mark.parametrize("blob_env", ["unusable"], indirect=True)
async def test_without_a_usable_store_documents_are_a_503_and_jobs_go_on(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    """The chart's defaults without blobs.url: a folder a pod cannot make. The
    document routes answer a 503 problem (never a 500), the rest works."""
    refused = [
        await post(client, {"file": ("a.txt", b"text")}),
        await client.post("/v1/documents/uploads"),
    ]
    for response in refused:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:conveyor:problem:blob-store-unavailable"
        assert int(response.headers["retry-after"]) >= 1
    assert await redis.keys("conveyor:{stats}:document*") == []
    assert await redis.zcard(DEFAULT_QUEUE) == 0  # no job for a document not stored
    assert (await client.get("/v1/documents/nope")).status_code == 404
    submitted = await client.post("/v1/jobs/create_task", json={"sleep_s": 0})
    assert submitted.status_code == 201, submitted.text
