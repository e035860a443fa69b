"""Api keys from a file (`CONVEYOR_API_KEYS_FILE`) that the api re-reads while it runs.

The file holds the same JSON list as `CONVEYOR_API_KEYS`. A Kubernetes Secret
mounted as a volume changes in place when the Secret does (the kubelet swaps a
symlink, so a read sees the old file or the new one, never half of it), so a
revoked key stops working without a restart.

`KeyFileReloader` reads the file every `interval_s` in a task of its own, off
the request path, and when its content changed puts a new `KeyRing` in
`app.state.keyring`, where every request looks its key up: a request sees the
old ring or the new one, whole. A file that cannot be read or does not parse
keeps the keys in force (and logs an error): a typo must neither lock every
client out nor let anyone in.
"""

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from conveyor_api.auth import ApiKey, KeyRing
from conveyor_core.metrics import API_KEYS_FILE_REJECTED, API_KEYS_RELOADS
from conveyor_core.tasks import cancel_and_wait

logger = logging.getLogger("conveyor.api.keys")

_KEY_LIST = TypeAdapter(list[ApiKey])

# Every outcome exported at 0 from the start: an alert on increase() sees the first.
for _outcome in ("applied", "invalid", "unreadable"):
    API_KEYS_RELOADS.labels(_outcome)


class KeyFileError(ValueError):
    """The keys file cannot be read, or is not a valid list of keys."""


def parse_keys(path: Path, content: bytes) -> list[ApiKey]:
    """The keys `content` (the file at `path`) holds, or KeyFileError naming what is wrong."""
    try:
        keys = _KEY_LIST.validate_json(content)
        KeyRing(keys)  # unique names and digests
    except (ValidationError, ValueError) as exc:
        # Only the error's locations and messages: never the input (a hash, a name).
        detail = (
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise KeyFileError(f"api keys file {path} is not a valid key list: {detail}") from None
    return keys


def _digest(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


class KeyFileReloader:
    """Re-reads the keys file every `interval_s`; a changed, valid file replaces
    `state.keyring` (the one place requests find the keys)."""

    def __init__(
        self,
        path: Path,
        interval_s: float,
        validate: Callable[[list[ApiKey]], None] = lambda keys: None,
    ) -> None:
        # `validate` refuses keys the file may not hold (their policies name
        # an unknown type, say) with a ValueError, at start and on each reload.
        self._validate = validate
        self._path = path
        self._interval_s = interval_s
        self._seen: bytes | None = None
        self._rejected = API_KEYS_FILE_REJECTED.labels(str(path))
        self._state: Any = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> KeyRing:
        """The keys the file holds now, read once: at start, where a bad file stops the api."""
        try:
            content = self._path.read_bytes()
        except OSError as exc:
            raise KeyFileError(
                f"api keys file {self._path} cannot be read: {exc.strerror}"
            ) from None
        keys = parse_keys(self._path, content)
        try:
            self._validate(keys)
        except ValueError as exc:
            raise KeyFileError(f"api keys file {self._path}: {exc}") from None
        ring = KeyRing(keys)
        self._seen = _digest(content)
        self._rejected.set(0)
        return ring

    def start(self, state: Any) -> None:
        """Check the file every `interval_s` from now on; a change replaces `state.keyring`."""
        self._state = state
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="api-keys-reload")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:  # the loop must outlive any surprise; the keys stay
                logger.exception("api keys reload failed; the keys in force stay")

    async def check(self) -> bool:
        """Read the file once; replace the keys if it changed and is valid. True if replaced."""
        try:
            content = await asyncio.to_thread(self._path.read_bytes)
        except OSError as exc:
            if self._seen is not None:  # once per outage, not every few seconds
                API_KEYS_RELOADS.labels("unreadable").inc()
                logger.error(
                    "api keys file %s cannot be read (%s); the keys in force stay",
                    self._path,
                    exc.strerror,
                )
            self._seen = None
            self._rejected.set(1)
            return False
        digest = _digest(content)
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            keys = parse_keys(self._path, content)
            try:
                self._validate(keys)
            except ValueError as exc:
                raise KeyFileError(f"api keys file {self._path}: {exc}") from None
        except KeyFileError as exc:
            API_KEYS_RELOADS.labels("invalid").inc()
            self._rejected.set(1)
            logger.error("%s; the keys in force stay", exc)
            return False
        before = {k.name for k in self._state.keyring.keys}
        self._state.keyring = KeyRing(keys)
        API_KEYS_RELOADS.labels("applied").inc()
        self._rejected.set(0)
        after = {k.name for k in keys}
        # Names only (never a digest): who gained or lost access, for the audit trail.
        logger.info(
            "api keys reloaded from %s: %d key(s); added %s, removed %s",
            self._path,
            len(keys),
            sorted(after - before),
            sorted(before - after),
        )
        if not keys:
            logger.warning("api keys file %s lists no keys: every /v1 request gets 401", self._path)
        return True
