"""Bytes out of the broker: one small interface over object storage.

Redis holds records; bytes (uploaded documents, large payloads and results)
live in a blob store, and a record keeps only a `BlobRef`: which store, which
key, how big, and its SHA-256, checked on every read. One driver serves every
kind of store through obstore (the `object_store` crate's Python binding):
a local folder (`file:///path`, `make run`'s default), S3 and everything
that speaks its protocol (MinIO, Ceph, R2, GCS's S3 interface), GCS and
Azure. Request signing is obstore's.
"""

import hashlib
import heapq
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from contextlib import aclosing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import obstore
import obstore.exceptions
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, ObjectStore, S3Store, from_url
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

# A blob is read back in chunks of this size (streams and checks).
CHUNK_BYTES = 1024 * 1024


class BlobSettings(BaseSettings):
    """Where bytes go. Read from `CONVEYOR_BLOBS_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_BLOBS_", extra="ignore")

    # file:///absolute/folder, s3://bucket/prefix, gs://bucket/prefix or
    # az://container/prefix. Cloud credentials come from the usual variables
    # (AWS_ACCESS_KEY_ID, ...) or the pod's cloud identity, unless given below.
    url: str = "file:///var/lib/conveyor/blobs"
    # An S3-compatible endpoint (MinIO, Ceph, R2, ...); empty: AWS's own.
    endpoint: str = ""
    region: str = ""
    # Path-style requests (`endpoint/bucket/key`), as MinIO and Ceph expect.
    path_style: bool = False
    # Credentials for S3, when not from the environment or a cloud identity.
    access_key_id: str = ""
    secret_access_key: SecretStr | None = None
    # Presigned URLs (direct uploads and downloads) stay valid this long.
    presign_expiry_s: float = Field(default=900.0, gt=0, le=7 * 86_400)


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What a record keeps of a blob: where it is and how to check it."""

    store: str
    key: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "BlobRef":
        return cls(str(raw["store"]), str(raw["key"]), int(raw["size"]), str(raw["sha256"]))


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob as a listing sees it."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one sweep did: how many blobs it deleted, and the key the next
    sweep of the same prefix resumes after ("" to start over)."""

    deleted: int
    resume_after: str


class BlobStoreUnavailableError(RuntimeError):
    """This service could not open its blob store (a folder it cannot make):
    every use fails with this until CONVEYOR_BLOBS_URL is fixed."""


# What a store that cannot be reached (or refuses, or was never opened)
# raises: answered 503 by the api and retried by the worker.
BLOB_STORE_ERRORS: tuple[type[Exception], ...] = (
    obstore.exceptions.BaseError,
    BlobStoreUnavailableError,
)


class BlobNotFoundError(LookupError):
    """No blob under that key (deleted, or never written)."""


class BlobIntegrityError(ValueError):
    """A blob's bytes are not what its reference says: changed or cut short."""


class BlobTooLargeError(ValueError):
    """A blob went over the size its writer allowed; nothing was kept."""


def _store_from_settings(settings: BlobSettings) -> ObjectStore:
    parts = urlsplit(settings.url)
    if parts.scheme == "file":
        folder = Path(parts.path)
        folder.mkdir(parents=True, exist_ok=True)
        return LocalStore(folder, mkdir=True)
    if parts.scheme in ("s3", "s3a"):
        config: dict[str, Any] = {}
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
        if settings.region:
            config["region"] = settings.region
        if settings.path_style:
            config["virtual_hosted_style_request"] = False
        if settings.access_key_id and settings.secret_access_key is not None:
            config["access_key_id"] = settings.access_key_id
            config["secret_access_key"] = settings.secret_access_key.get_secret_value()
        allow_http = urlsplit(settings.endpoint).scheme == "http"
        return S3Store.from_url(
            settings.url,
            client_options={"allow_http": allow_http},
            **config,  # S3Config keys, checked by obstore
        )
    return from_url(settings.url)


class BlobStore:
    """One store: put, get (checked), stream, delete, list, presign."""

    def __init__(
        self,
        store: ObjectStore | None,
        name: str,
        presign_expiry_s: float = 900.0,
        unavailable_because: str = "",
    ) -> None:
        self._store = store
        self.name = name
        self.presign_expiry_s = presign_expiry_s
        self._unavailable_because = unavailable_because

    @property
    def store(self) -> ObjectStore:
        """The opened store (BlobStoreUnavailableError when it could not be opened)."""
        if self._store is None:
            raise BlobStoreUnavailableError(self._unavailable_because)
        return self._store

    @classmethod
    def from_settings(cls, settings: BlobSettings | None = None) -> "BlobStore":
        settings = settings or BlobSettings()
        name = urlsplit(settings.url).scheme or "file"
        return cls(_store_from_settings(settings), name, settings.presign_expiry_s)

    @classmethod
    def open(cls, settings: BlobSettings | None = None) -> "BlobStore":
        """The configured store; when its folder cannot be made (a pod's read-only
        filesystem, say), one that refuses every use with BlobStoreUnavailableError
        (logged here): the service still starts, and all that needs no blob works."""
        settings = settings or BlobSettings()
        try:
            return cls.from_settings(settings)
        except OSError as exc:
            logger.warning(
                "the blob store cannot be opened (CONVEYOR_BLOBS_URL %s): %s; every use "
                "of it fails until it names an object store or a folder this service may write",
                settings.url,
                exc,
            )
            # Without the path: a job's error and the api's log say this, not where.
            reason = (
                f"the blob store could not be opened ({exc.strerror or type(exc).__name__}): "
                "set CONVEYOR_BLOBS_URL to an object store, or to a folder this service "
                "may write and every api and worker process shares"
            )
            name = urlsplit(settings.url).scheme or "file"
            return cls(None, name, settings.presign_expiry_s, reason)

    async def put(
        self, key: str, data: bytes | AsyncIterable[bytes], max_bytes: int | None = None
    ) -> BlobRef:
        """Write `data` under `key` (streamed: a file is never whole in memory) and
        return its reference. Over `max_bytes`, nothing is kept (BlobTooLargeError)."""
        digest, size = hashlib.sha256(), 0

        async def counted(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLargeError(f"{key}: over {max_bytes} bytes")
                digest.update(chunk)
                yield chunk

        if isinstance(data, bytes):
            if max_bytes is not None and len(data) > max_bytes:
                raise BlobTooLargeError(f"{key}: {len(data)} bytes, over {max_bytes}")
            digest.update(data)
            size = len(data)
            await obstore.put_async(self.store, key, data)
        else:
            await obstore.put_async(self.store, key, counted(data))
        return BlobRef(self.name, key, size, digest.hexdigest())

    async def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes, after checking their size and SHA-256 against `ref`."""
        chunks = [chunk async for chunk in self.stream(ref)]
        return b"".join(chunks)

    async def read_unchecked(self, key: str) -> AsyncGenerator[bytes, None]:
        """A blob's bytes in chunks, with nothing to check them against (a
        client's direct upload, before it has a reference)."""
        try:
            result = await obstore.get_async(self.store, key)
        except (NotFoundError, FileNotFoundError) as exc:
            raise BlobNotFoundError(key) from exc
        async for buffer in result.stream(min_chunk_size=CHUNK_BYTES):
            yield bytes(buffer)

    async def stream(self, ref: BlobRef) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in chunks; the last one is followed by the check (a
        changed blob raises BlobIntegrityError instead of ending the stream)."""
        digest, size = hashlib.sha256(), 0
        async for chunk in self.read_unchecked(ref.key):
            digest.update(chunk)
            size += len(chunk)
            if size > ref.size:
                break
            yield chunk
        if size != ref.size or digest.hexdigest() != ref.sha256:
            raise BlobIntegrityError(
                f"blob {ref.key}: {size} bytes with another checksum than the "
                f"{ref.size} bytes its record refers to"
            )

    async def delete(self, *keys: str) -> None:
        """Remove blobs; a key with no blob is not an error."""
        for key in keys:
            try:
                await obstore.delete_async(self.store, key)
            except (NotFoundError, FileNotFoundError):
                continue

    async def list(self, prefix: str, after: str = "") -> AsyncGenerator[BlobInfo, None]:
        """The blobs under `prefix`; with `after`, only those whose keys sort after it."""
        async for batch in obstore.list(self.store, prefix, offset=after or None):
            for meta in batch:
                yield BlobInfo(meta["path"], meta["size"], meta["last_modified"])

    async def presign(self, method: Literal["GET", "PUT"], key: str) -> str | None:
        """A URL a client may GET or PUT directly for `presign_expiry_s`; None when
        this store cannot presign (a local folder: stream through the api)."""
        if isinstance(self.store, LocalStore):
            return None
        expires = timedelta(seconds=self.presign_expiry_s)
        return await obstore.sign_async(self.store, method, key, expires)  # type: ignore[arg-type]

    async def sweep(
        self,
        prefix: str,
        referenced: Callable[[str], Awaitable[bool]],
        older_than_s: float,
        budget: int = 1000,
        after: str = "",
    ) -> Sweep:
        """Delete blobs under `prefix` older than `older_than_s` that no record
        refers to (an upload that never registered, a crash mid-way), looking at
        the first `budget` keys after `after` in key order. The answer says where
        the next sweep resumes, so repeated sweeps walk every key however many
        there are, at a bounded cost each."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        batch = await self._keys_after(prefix, after, budget)
        deleted = 0
        for info in batch:
            if info.last_modified < cutoff and not await referenced(info.key):
                await self.delete(info.key)
                deleted += 1
        # A short batch reached the listing's end: the next sweep starts over.
        resume_after = batch[-1].key if len(batch) == budget else ""
        return Sweep(deleted, resume_after)

    async def _keys_after(self, prefix: str, after: str, count: int) -> Sequence[BlobInfo]:
        """The first `count` blobs under `prefix` whose keys sort after `after`.
        Object stores list in key order, so the listing stops there; a local
        folder lists in directory order, so all of it is read (one machine's)."""
        if isinstance(self.store, LocalStore):
            listed = [info async for info in self.list(prefix, after)]
            return heapq.nsmallest(count, listed, key=lambda info: info.key)
        first: list[BlobInfo] = []
        async with aclosing(self.list(prefix, after)) as listing:
            async for info in listing:
                first.append(info)
                if len(first) == count:
                    break
        return first
