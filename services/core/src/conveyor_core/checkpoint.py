"""Checkpoints: where a long job got to, so that its next try resumes there.

A handler saves a small JSON cursor as it goes (`ctx.checkpoint(cursor)`); the
job's record keeps the last one (lua/checkpoint.lua, fenced by the try's token
as a progress report is). Every later try reads it (`ctx.last_checkpoint()`,
one read, and only by a job that asks): a try cut short by a shutdown, a
crash, its timeout or an error resumes from it, as Sidekiq's Iterable jobs
do. A requeue from the dead letters resumes too, unless the operator asks to
start over. `iterate` is the common loop: it skips what the checkpoint says
is done, saves one every N items, and hands the job back at a shutdown.
"""

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# A cursor is a position (an offset, an id, a page token), not the data: the
# record keeps it, every read of the job returns it.
MAX_CURSOR_BYTES = 4096


class CheckpointError(ValueError):
    """A cursor that cannot be saved: not JSON, or over MAX_CURSOR_BYTES."""


class Interrupted(Exception):  # noqa: N818 (a request, not an error)
    """Raise to hand the job back now, as a shutdown does: queued again at once,
    the try not counted. For a loop that saw `ctx.stopping` and saved its
    checkpoint (`iterate` does both)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last checkpoint a try of the job saved."""

    cursor: Any
    saved_at_ms: int
    # Items done and in all, when the handler said (progress is derived from them).
    done: int | None = None
    total: int | None = None
    # The try that saved it.
    job_try: int = 0

    def encode(self) -> str:
        """As the record keeps it: one JSON field (`checkpoint`)."""
        saved = {"cursor": self.cursor, "saved_at_ms": self.saved_at_ms, "try": self.job_try}
        if self.done is not None:
            saved["done"] = self.done
        if self.total is not None:
            saved["total"] = self.total
        return json.dumps(saved, separators=(",", ":"), allow_nan=False)

    @classmethod
    def decode(cls, raw: str | bytes | None) -> "Checkpoint | None":
        """The record's field, or None when there is none (or it is unreadable)."""
        if not raw:
            return None
        try:
            saved = json.loads(raw)
            return cls(
                cursor=saved["cursor"],
                saved_at_ms=int(saved["saved_at_ms"]),
                done=saved.get("done"),
                total=saved.get("total"),
                job_try=int(saved.get("try", 0)),
            )
        except (ValueError, TypeError, KeyError):
            return None

    @property
    def percent(self) -> int | None:
        """Progress as derived from done and total (None without both)."""
        if self.done is None or not self.total:
            return None
        return max(0, min(100, self.done * 100 // self.total))


def new_checkpoint(cursor: Any, *, done: int | None, total: int | None, job_try: int) -> Checkpoint:
    """A checkpoint to save now; raises CheckpointError for a cursor that is not
    JSON or is too large, and ValueError for counts that make no sense."""
    try:
        encoded = json.dumps(cursor, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"a checkpoint's cursor must be JSON: {exc}") from None
    size = len(encoded.encode())
    if size > MAX_CURSOR_BYTES:
        raise CheckpointError(
            f"a checkpoint's cursor is {size} bytes as JSON, over the {MAX_CURSOR_BYTES} "
            "kept: save a position (an offset, an id), not the data"
        )
    for name, count in (("done", done), ("total", total)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValueError(f"{name} must be an int or None, not {count!r}")
        if count is not None and count < 0:
            raise ValueError(f"{name} must be >= 0, not {count}")
    return Checkpoint(json.loads(encoded), int(time.time() * 1000), done, total, job_try)


class Checkpointing(Protocol):
    """What `iterate` needs of a job's context (JobContext is one)."""

    @property
    def stopping(self) -> bool: ...

    async def checkpoint(
        self, cursor: Any, *, done: int | None = None, total: int | None = None
    ) -> bool: ...

    async def last_checkpoint(self) -> Checkpoint | None: ...


async def _items(source: Iterable[T] | AsyncIterable[T], skip: int) -> AsyncIterator[T]:
    """The items of `source` after its first `skip`."""
    if isinstance(source, AsyncIterable):
        async for item in source:
            if skip:
                skip -= 1
                continue
            yield item
    else:
        for item in islice(source, skip, None):
            yield item


def _resumed(last: Checkpoint | None, keyed: bool) -> tuple[int, Any]:
    """(items to skip by position, the key done last) from the last checkpoint."""
    if last is None or last.cursor is None:
        return 0, None
    if keyed:
        return 0, last.cursor
    if isinstance(last.cursor, bool) or not isinstance(last.cursor, int) or last.cursor < 0:
        raise CheckpointError(
            f"the job's last checkpoint ({last.cursor!r}) is not a count of items done: "
            "was it saved by hand, or by a loop with a key? Pass that key, or resume it by hand"
        )
    return last.cursor, None


async def iterate(
    ctx: Checkpointing,
    items: Iterable[T] | AsyncIterable[T],
    *,
    every: int = 100,
    key: Callable[[T], Any] | None = None,
    budget_s: float | None = None,
) -> AsyncIterator[T]:
    """`items`, resumed from the job's last checkpoint, saving one every `every`
    items (see JobContext.iterate)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, not {every!r}")
    total = len(items) if isinstance(items, Sized) else None
    last = await ctx.last_checkpoint()
    # Without a key the cursor is the count of items done (skipped by
    # position); with one, the key of the last item done, and items come in
    # ascending key order (skipped up to it).
    position, after = _resumed(last, key is not None)
    done = last.done if last is not None and last.done is not None else position
    started_s = time.monotonic()
    since_saved = 0
    cursor: Any = None
    async for item in _items(items, position):
        if after is not None and key is not None and key(item) <= after:
            continue
        yield item  # the handler works on it: back here, it is done
        done += 1
        position += 1
        since_saved += 1
        cursor = position if key is None else key(item)
        out_of_time = budget_s is not None and time.monotonic() - started_s >= budget_s
        if since_saved >= every or ctx.stopping or out_of_time:
            since_saved = 0
            saved = await ctx.checkpoint(cursor, done=done, total=total)
            # Not saved: another try owns the job now (this one is stale).
            if not saved or ctx.stopping or out_of_time:
                raise Interrupted()
    if since_saved:
        await ctx.checkpoint(cursor, done=done, total=total)
