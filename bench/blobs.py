"""Bytes out of the broker: what Redis keeps per stored document and per
offloaded job, and upload throughput through the api.

`python -m bench.blobs` (part of `make bench`) starts a Redis of its own and
a folder blob store, and prints each figure beside its target:

- Redis memory per stored 5 MiB document (its record only): at most 2 KB;
- Redis memory per queued job with a 1 MiB payload (offloaded): at most 2 KB;
- upload throughput of 5 MiB documents through the api (key, checks, blob
  store, record, its job) against a plain FastAPI route that writes the same
  bytes to a file, each its own uvicorn process, in alternating rounds: at
  least 0.5x.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.http import BENCH_KEY, LOG_DIR, REPO_ROOT, answers
from bench.jobs import JOB_TYPES, Carry
from conveyor_api.auth import Scope, key_digest
from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.catalog import Catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.local.redis_server import free_port, resolve_redis
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_seed.documents import DocumentStore

MIB = 1024 * 1024
DOCUMENTS = 64
# Written before measuring: one-off costs (scripts loaded, the keyspace's first
# tables) are not any one item's.
WARMUP = 8
DOCUMENT_BYTES = 5 * MIB
JOBS = 100
PAYLOAD_BYTES = MIB
TARGET_BYTES_PER_ITEM = 2048
# Upload rounds, alternating between the two servers; uploads per round, and at once.
ROUNDS = 4
UPLOADS_PER_ROUND = 24
CONCURRENCY = 4
TARGET_RATIO = 0.5


def used_memory(info: dict[str, object]) -> int:
    return int(str(info["used_memory"]))


async def memory_per_item(redis_url: str, folder: Path) -> tuple[float, float]:
    """Redis' used_memory per stored 5 MiB document, and per queued job with a
    1 MiB payload, each measured over many so the allocator's steps average out
    (used_memory also counts a key's share of the keyspace's own tables)."""
    redis = create_redis(RedisSettings(url=redis_url))
    blobs = BlobStore.from_settings(BlobSettings(url=f"file://{folder}"))
    try:
        await redis.flushall()
        documents = DocumentStore(redis, blobs)
        content = (b"word " * (DOCUMENT_BYTES // 5 + 1))[:DOCUMENT_BYTES]
        before = 0
        for number in range(-WARMUP, DOCUMENTS):
            if number == 0:
                before = used_memory(await redis.info("memory"))
            await documents.create(
                f"bench-document-{number}",
                name="report.txt",
                content_type="text/plain",
                content=content,
                notify_email="",
                retention_s=3600,
                uploaded_by="bench",
            )
        per_document = (used_memory(await redis.info("memory")) - before) / DOCUMENTS

        catalog = Catalog(JOB_TYPES)
        store = JobStore(redis, catalog, blobs=blobs)
        payload = Carry(data="p" * PAYLOAD_BYTES)
        for number in range(-WARMUP, JOBS):
            if number == 0:
                before = used_memory(await redis.info("memory"))
            await enqueue(store, catalog["carry"], payload, defer_by_s=3600)
        per_job = (used_memory(await redis.info("memory")) - before) / JOBS
        return per_document, per_job
    finally:
        await redis.aclose()


@contextmanager
def server(name: str, command: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    """A server as its own process, until the block ends; yields its base URL."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with (LOG_DIR / f"blobs-{name}.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own modules
            command,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not answers(url + "/openapi.json"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {log.name}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def api_env(redis_url: str, port: int, folder: Path) -> dict[str, str]:
    """The api as shipped, with the seed's document routes and a folder store."""
    key = {"name": "bench", "sha256": key_digest(BENCH_KEY), "scopes": [s.value for s in Scope]}
    return {
        "REDIS_URL": redis_url,
        "CONVEYOR_API_HOST": "127.0.0.1",
        "CONVEYOR_API_PORT": str(port),
        "CONVEYOR_API_KEYS": json.dumps([key]),
        "CONVEYOR_API_RATE_LIMIT_PER_S": "1000000",
        "CONVEYOR_API_RATE_LIMIT_BURST": "1000000",
        "CONVEYOR_API_LOG_LEVEL": "INFO",
        "CONVEYOR_JOB_MODULES": "conveyor_seed,bench.jobs",
        "CONVEYOR_BLOBS_URL": f"file://{folder}",
        "CONVEYOR_DOCUMENTS_MAX_BYTES": str(DOCUMENT_BYTES + MIB),
    }


def upload_round(url: str, path: str, headers: dict[str, str], content: bytes) -> float:
    """MiB/s of UPLOADS_PER_ROUND uploads, CONCURRENCY at once."""

    def one(client: httpx.Client) -> None:
        files = {"file": ("report.txt", content, "text/plain")}
        response = client.post(url + path, files=files, headers=headers)
        if response.status_code not in (201, 202):
            raise RuntimeError(f"upload to {url}{path}: {response.status_code} {response.text}")

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: one(client), range(UPLOADS_PER_ROUND)))
        elapsed_s = time.perf_counter() - started
    return UPLOADS_PER_ROUND * len(content) / MIB / elapsed_s


def upload_throughput(redis_url: str, folder: Path) -> tuple[list[float], list[float]]:
    content = (b"word " * (DOCUMENT_BYTES // 5 + 1))[:DOCUMENT_BYTES]
    api_port, bare_port = free_port(), free_port()
    ours: list[float] = []
    bare: list[float] = []
    api_command = [sys.executable, "-m", "conveyor_api"]
    bare_command = [sys.executable, "-m", "bench.bare_upload", str(bare_port), str(folder / "bare")]
    with (
        server("api", api_command, api_env(redis_url, api_port, folder / "api"), api_port) as api,
        server("bare", bare_command, {}, bare_port) as plain,
    ):
        auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        upload_round(api, "/v1/documents", auth, content)  # warm-up, not counted
        upload_round(plain, "/upload", {}, content)
        for number in range(1, ROUNDS + 1):
            print(f"upload round {number}: conveyor ...", flush=True)
            ours.append(upload_round(api, "/v1/documents", auth, content))
            print(f"upload round {number}: plain FastAPI ...", flush=True)
            bare.append(upload_round(plain, "/upload", {}, content))
    return ours, bare


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    with resolve_redis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per_document, per_job = asyncio.run(memory_per_item(redis_server.url, folder / "memory"))
        ours, bare = upload_throughput(redis_server.url, folder / "uploads")
    ours_mib_s, bare_mib_s = statistics.median(ours), statistics.median(bare)
    ratio = ours_mib_s / bare_mib_s
    print("| figure | value | target | |")
    print("| --- | --- | --- | --- |")
    print(
        f"| Redis memory per stored 5 MiB document | {per_document:,.0f} B | "
        f"<= {TARGET_BYTES_PER_ITEM} B | {verdict(per_document <= TARGET_BYTES_PER_ITEM)} |"
    )
    print(
        f"| Redis memory per queued job, 1 MiB payload (offloaded) | {per_job:,.0f} B | "
        f"<= {TARGET_BYTES_PER_ITEM} B | {verdict(per_job <= TARGET_BYTES_PER_ITEM)} |"
    )
    print(
        f"| upload of 5 MiB documents, api (folder store) | {ours_mib_s:,.0f} MiB/s | | |\n"
        f"| upload of 5 MiB, plain FastAPI route to a file | {bare_mib_s:,.0f} MiB/s | | |\n"
        f"| ratio (median of {ROUNDS} alternating rounds, {CONCURRENCY} at once) | "
        f"{ratio:.2f}x | >= {TARGET_RATIO}x | {verdict(ratio >= TARGET_RATIO)} |"
    )


if __name__ == "__main__":
    main()
