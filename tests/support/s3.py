"""A real S3-protocol server for tests: moto's server mode, as a process of its own
on loopback. It speaks S3's wire protocol (signed requests, multipart uploads,
presigned URLs); it is not AWS S3, whose own behaviour (consistency, limits,
IAM) these tests do not exercise."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from conveyor_core.local.redis_server import free_port

BUCKET = "conveyor-tests"
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def environment(self, prefix: str = "") -> dict[str, str]:
        """The Conveyor settings that point the blob store at this server."""
        return {
            "CONVEYOR_BLOBS_URL": f"s3://{self.bucket}/{prefix}".rstrip("/"),
            "CONVEYOR_BLOBS_ENDPOINT": self.endpoint,
            "CONVEYOR_BLOBS_REGION": "us-east-1",
            "CONVEYOR_BLOBS_PATH_STYLE": "true",
            "CONVEYOR_BLOBS_ACCESS_KEY_ID": "testing",
            "CONVEYOR_BLOBS_SECRET_ACCESS_KEY": "testing",
        }


@contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with `bucket` created."""
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.put(f"{endpoint}/{bucket}", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the S3 server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield S3Server(endpoint, bucket)
    finally:
        process.terminate()
        process.wait(timeout=10)
