"""Bulk actions: cancel, requeue or delete every job a filter matches.

A bulk action is a record in Redis (`conveyor:bulk:{id}`: action, filter,
who, state, counts, and the listing cursor it has reached) and a task in an
api process that walks the listing in pages of at most `batch` jobs; each
page is acted on by one bounded Lua call per queue and job type
(`JobStore.bulk_batch`), then the record's cursor and counts move on. So:

- the api stays responsive: no call walks an index, and the task yields
  between batches;
- it is resumable: a task that stops (the api restarts) leaves its cursor;
  every api process looks for unfinished actions whose lock has lapsed and
  goes on with them (`adopt`), and `resume` does so at once;
- it is safe to run twice: a lock (refreshed per batch) lets one process at
  a time run an action, and each job is acted on only in a state the action
  applies to (a requeued job is no longer dead), so a batch repeated after a
  crash does nothing the second time;
- it can be stopped: cancelling marks the record `cancelled`, and the process
  running it stops after the batch in flight (each batch reads the state);
- it can be bounded: `at_most` stops it after that many matches (a delete
  of every job must name the count its preview showed).
"""

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from conveyor_api import audit
from conveyor_core import keys
from conveyor_core.catalog import Catalog
from conveyor_core.claimcheck import delete_if_gone, reference_of
from conveyor_core.jobs import DEAD_RETENTION_S, JobPublic, JobState, now_ms
from conveyor_core.logging import bound
from conveyor_core.redis import (
    REDIS_DOWN_ERRORS,
    REDIS_FAULT_ERRORS,
    describe_redis_error,
    redis_fault,
)
from conveyor_core.store import BULK_BATCH_MAX, SCAN_BUDGET_PER_ITEM, JobFilter, JobStore
from conveyor_core.tasks import cancel_and_wait

logger = logging.getLogger("conveyor.api.bulk")

# What a Redis fault may raise as: its class, or a reply error `redis_fault` names.
_FAULT_OR_REPLY_ERRORS: tuple[type[Exception], ...] = (*REDIS_FAULT_ERRORS, ResponseError)

# A bulk action's record stays readable this long after it starts.
BULK_RECORD_TTL_S = 7 * 86_400
# The lock of a running bulk action: refreshed every batch, so a dead
# process's action can be resumed this soon after it stopped.
BULK_LOCK_TTL_MS = 15_000
# How often an api process looks for bulk actions whose process stopped.
BULK_ADOPT_EVERY_S = BULK_LOCK_TTL_MS / 1000
# Jobs per batch (one listing page, then one Lua call per queue and type).
DEFAULT_BATCH = 200
# A preview reads the listing in pages of at most this many matches (and
# SCAN_BUDGET_PER_ITEM times as many index entries): between two pages it
# checks its budget and its client, and other requests get their turn.
PREVIEW_PAGE = 100
# A preview's lock outlives its time limit by this much, so a process that
# died mid-preview frees its key soon after.
PREVIEW_LOCK_EXTRA_S = 5.0


# The record, unless one exists under that id (a client's retried start).
CREATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


# End a running action (done or failed), unless it was cancelled meanwhile;
# returns the state it is left in.
END_RECORD = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2],
  'finished_at_ms', ARGV[3], 'updated_at_ms', ARGV[3])
return ARGV[1]
"""
# Cancel a running action; 1 if it was running, else 0.
CANCEL_RECORD = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancelled_by', ARGV[1],
  'finished_at_ms', ARGV[2], 'updated_at_ms', ARGV[2])
return 1
"""
# Delete a lock only while it is still the holder's (its token).
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Count:
    """What a preview counted: `count` matches, all of them (`exact`) or at
    least that many (its budget ran out first), in `scanned` index entries."""

    count: int
    exact: bool
    scanned: int


@dataclass(frozen=True, slots=True)
class BulkStatus:
    id: str
    action: str
    filter: dict[str, Any]
    who: str
    state: str  # running, done, failed or cancelled
    matched: int  # jobs the filter matched so far
    done: int  # jobs acted on
    skipped: int  # jobs the action did not apply to (already moved on)
    batches: int
    started_at_ms: int
    updated_at_ms: int
    finished_at_ms: int | None
    error: str
    at_most: int | None = None  # stop after this many matches
    request_id: str = ""  # the request that started it
    cancelled_by: str = ""

    @classmethod
    def of(cls, bulk_id: str, raw: dict[bytes, bytes]) -> "BulkStatus":
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=bulk_id,
            action=f.get("action", ""),
            filter=json.loads(f.get("filter") or "{}"),
            who=f.get("who", ""),
            state=f.get("state", ""),
            matched=int(f.get("matched") or 0),
            done=int(f.get("done") or 0),
            skipped=int(f.get("skipped") or 0),
            batches=int(f.get("batches") or 0),
            started_at_ms=int(f.get("started_at_ms") or 0),
            updated_at_ms=int(f.get("updated_at_ms") or 0),
            finished_at_ms=int(f["finished_at_ms"]) if f.get("finished_at_ms") else None,
            error=f.get("error", ""),
            at_most=int(f["at_most"]) if f.get("at_most") else None,
            request_id=f.get("request_id", ""),
            cancelled_by=f.get("cancelled_by", ""),
        )


class BulkRunner:
    """Starts, runs, resumes and reads bulk actions, in this api process."""

    def __init__(
        self, redis: "Redis", store: JobStore, catalog: Catalog, batch: int = DEFAULT_BATCH
    ) -> None:
        self.redis = redis
        self.store = store
        self.catalog = catalog
        self.batch = min(batch, BULK_BATCH_MAX)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._create = redis.register_script(CREATE_RECORD)
        self._release = redis.register_script(RELEASE_LOCK)
        self._end = redis.register_script(END_RECORD)
        self._cancel = redis.register_script(CANCEL_RECORD)
        self._adopter: asyncio.Task[None] | None = None
        self._stopping = False

    async def count(
        self,
        where: JobFilter,
        *,
        max_rows: int,
        timeout_s: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> Count:
        """How many jobs match now (a preview), reading pages of the listing:
        at most about `max_rows` index entries, for at most about `timeout_s`,
        and no further once `gone()` says the client left."""
        deadline = time.monotonic() + timeout_s
        total = scanned = 0
        cursor = None
        while True:
            rows_left = max(max_rows - scanned, 1)
            limit = min(PREVIEW_PAGE, math.ceil(rows_left / SCAN_BUDGET_PER_ITEM))
            page = await self.store.list(where=where, limit=limit, cursor=cursor)
            total += len(page.items)
            scanned += page.scanned
            if page.next_cursor is None:
                return Count(total, True, scanned)
            if scanned >= max_rows or time.monotonic() >= deadline:
                return Count(total, False, scanned)
            if gone is not None and await gone():
                logger.info("bulk preview stopped: the client went away")
                return Count(total, False, scanned)
            cursor = page.next_cursor

    @contextlib.asynccontextmanager
    async def previewing(self, who: str, timeout_s: float) -> AsyncIterator[bool]:
        """Whether `who` may preview now (one preview at a time per key, across
        replicas): holds the key's preview lock while the block runs."""
        lock, token = keys.preview_lock_key(who), secrets.token_hex(8)
        ttl_ms = int((timeout_s + PREVIEW_LOCK_EXTRA_S) * 1000)
        taken = bool(await self.redis.set(lock, token, px=ttl_ms, nx=True))
        try:
            yield taken
        finally:
            if taken:
                with contextlib.suppress(*REDIS_DOWN_ERRORS):  # it lapses by itself
                    await self._release(keys=[lock], args=[token])

    async def start(
        self,
        action: str,
        where: JobFilter,
        who: str,
        bulk_id: str | None = None,
        at_most: int | None = None,
    ) -> BulkStatus:
        """Create the record and run it; an existing `bulk_id` is returned as it is
        (so a client retrying its start starts nothing twice). `at_most`: stop
        after that many matches."""
        bulk_id = bulk_id or secrets.token_hex(8)
        at_ms = now_ms()
        request_id = bound("request_id") or ""
        record = {
            "action": action,
            "filter": json.dumps(where.as_dict()),
            "who": who,
            "state": "running",
            "matched": 0,
            "done": 0,
            "skipped": 0,
            "batches": 0,
            "cursor": "",
            "started_at_ms": at_ms,
            "updated_at_ms": at_ms,
            "at_most": "" if at_most is None else at_most,
            "request_id": request_id,
        }
        flat = [str(v) for pair in record.items() for v in pair]
        created = await self._create(keys=[keys.bulk_key(bulk_id)], args=[BULK_RECORD_TTL_S, *flat])
        if not created:
            existing = await self.get(bulk_id)
            assert existing is not None
            return existing
        await self.redis.zadd(keys.BULK_RUNNING, {bulk_id: at_ms})
        detail = {**where.as_dict(), **({"at_most": at_most} if at_most is not None else {})}
        await audit.record(self.redis, who, f"bulk_{action}", "filter", 0, detail)
        self.spawn(bulk_id)
        status = await self.get(bulk_id)
        assert status is not None
        return status

    async def cancel(self, bulk_id: str, who: str) -> bool:
        """Stop a running action (its process stops after the batch in flight);
        whether it was running."""
        if not await self._cancel(keys=[keys.bulk_key(bulk_id)], args=[who, now_ms()]):
            return False
        await self.redis.zrem(keys.BULK_RUNNING, bulk_id)
        await audit.record(self.redis, who, "cancel_bulk", bulk_id, 0)
        return True

    async def get(self, bulk_id: str) -> BulkStatus | None:
        raw = await self.redis.hgetall(keys.bulk_key(bulk_id))  # type: ignore[misc]
        return BulkStatus.of(bulk_id, raw) if raw else None

    def spawn(self, bulk_id: str) -> None:
        task = self._tasks.get(bulk_id)
        if task is None or task.done():
            self._tasks[bulk_id] = asyncio.create_task(self._run(bulk_id))

    def start_adopting(self) -> None:
        """From now on, every BULK_ADOPT_EVERY_S: run the unfinished bulk actions
        no process runs any more (their process stopped, this one or another)."""
        self._adopter = asyncio.create_task(self._adopt_forever())

    async def _adopt_forever(self) -> None:
        # A cancel that lands in a Redis call may surface as a connection error:
        # the stop flag (and the task's own cancelling count) end the loop anyway.
        while not self._stopping:
            try:
                await self.adopt()
            except _FAULT_OR_REPLY_ERRORS as exc:
                # Down, read-only or moving slots (a failover): next time.
                if redis_fault(exc) is None:
                    raise
            task = asyncio.current_task()
            if self._stopping or (task is not None and task.cancelling()):
                return
            await asyncio.sleep(BULK_ADOPT_EVERY_S)

    async def adopt(self) -> None:
        for raw in await self.redis.zrange(keys.BULK_RUNNING, 0, -1):
            self.spawn(raw.decode())  # the run takes the lock, or leaves it to its holder

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks.values(), *([self._adopter] if self._adopter else [])]
        await cancel_and_wait(*tasks)

    async def wait(self, bulk_id: str) -> None:
        """Until this process's run of `bulk_id` ends (for tests)."""
        task = self._tasks.get(bulk_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, bulk_id: str) -> None:
        lock = keys.bulk_lock_key(bulk_id)
        token = secrets.token_hex(8)
        if not await self.redis.set(lock, token, px=BULK_LOCK_TTL_MS, nx=True):
            return  # another process runs it
        key = keys.bulk_key(bulk_id)
        try:
            status = await self.get(bulk_id)
            if status is None or status.state != "running":
                await self.redis.zrem(keys.BULK_RUNNING, bulk_id)
                return
            raw_cursor = await self.redis.hget(key, "cursor")  # type: ignore[misc]
            cursor = raw_cursor.decode() if raw_cursor else None
            where = JobFilter.from_dict(status.filter)
            matched = status.matched
            while True:
                page = await self.store.list(where=where, limit=self.batch, cursor=cursor)
                jobs, cursor = page.items, page.next_cursor
                if status.at_most is not None and matched + len(jobs) >= status.at_most:
                    jobs, cursor = jobs[: status.at_most - matched], None  # its bound
                done, skipped = await self._act(status.action, jobs)
                matched += len(jobs)
                # One round trip, not a transaction: the record and its lock
                # are in two slots on a cluster. A reader may see a batch's
                # counts land one after another; the lock holder is the only writer.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hincrby(key, "matched", len(jobs))
                    pipe.hincrby(key, "done", done)
                    pipe.hincrby(key, "skipped", skipped)
                    pipe.hincrby(key, "batches", 1)
                    pipe.hset(key, mapping={"cursor": cursor or "", "updated_at_ms": now_ms()})
                    pipe.pexpire(lock, BULK_LOCK_TTL_MS)
                    pipe.hget(key, "state")
                    *_, state = await pipe.execute()
                if cursor is None or state != b"running":  # done, or cancelled
                    break
                await asyncio.sleep(0)  # let requests in between batches
            await self._finish(bulk_id, "done", "")
        except asyncio.CancelledError:
            raise  # the process stops: the cursor stays, for a resume
        except Exception as exc:  # a failed batch stops the action; it says why
            if self._stopping:
                return  # the process stops: the cursor stays, for a resume
            logger.exception("bulk action %s failed", bulk_id)
            # Bounded, and without a failed command's arguments (redis-py puts them in).
            await self._finish(bulk_id, "failed", describe_redis_error(exc))
        finally:
            with contextlib.suppress(Exception):
                if (await self.redis.get(lock)) == token.encode():
                    await self.redis.delete(lock)

    async def _finish(self, bulk_id: str, state: str, error: str) -> None:
        """End the action as `state` (unless it was cancelled: it stays so) and
        log how it ended, under the request that started it."""
        await self._end(keys=[keys.bulk_key(bulk_id)], args=[state, error, now_ms()])
        await self.redis.zrem(keys.BULK_RUNNING, bulk_id)
        status = await self.get(bulk_id)
        if status is not None:
            await audit.record(
                self.redis,
                status.who,
                f"bulk_{status.action}",
                f"bulk {bulk_id} {status.state}",
                status.done,
                {"filter": status.filter, "skipped": status.skipped, "error": status.error},
                request_id=status.request_id,
            )

    async def _act(self, action: str, jobs: list[JobPublic]) -> tuple[int, int]:
        """One Lua call per queue and job type present in the page."""
        groups: dict[tuple[str, str], list[JobPublic]] = {}
        skipped = 0
        for job in jobs:
            if action == "requeue" and job.job_type not in self.catalog:
                skipped += 1  # requeue needs the type's function
                continue
            groups.setdefault((job.queue, job.job_type), []).append(job)
        done = 0
        for (queue, job_type), group in groups.items():
            found = self.catalog.get(job_type)
            retention_s = found.keep_result_s if found else DEAD_RETENTION_S
            idempotency = [
                keys.idempotency_key(
                    self.store.shard_of(j.id, queue), j.job_type, j.idempotency_key, j.submitted_by
                )
                for j in group
                if j.idempotency_key and j.state is not JobState.IN_PROGRESS
            ]
            result = await self.store.bulk_batch(
                action, queue, [j.id for j in group], int(retention_s * 1000), idempotency
            )
            done += result.done
            skipped += result.skipped
            if action == "delete":
                await self._delete_blobs(group)
        return done, skipped

    async def _delete_blobs(self, group: list[JobPublic]) -> None:
        """A deleted job's offloaded payload and result go with it (claimcheck.py)."""
        blobs = self.store.blobs
        offloaded = [
            j.id
            for j in group
            if reference_of(j.payload) is not None or reference_of(j.result) is not None
        ]
        if blobs is not None and offloaded:
            await delete_if_gone(blobs, self.store.redis, offloaded)
