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
  crash does nothing the second time.
"""

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from conveyor_api import audit
from conveyor_core import keys
from conveyor_core.catalog import Catalog
from conveyor_core.claimcheck import delete_if_gone, reference_of
from conveyor_core.jobs import DEAD_RETENTION_S, JobPublic, JobState, now_ms
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import BULK_BATCH_MAX, JobFilter, JobStore

logger = logging.getLogger("conveyor.api.bulk")

# A bulk action's record stays readable this long after it starts.
BULK_RECORD_TTL_S = 7 * 86_400
# The lock of a running bulk action: refreshed every batch, so a dead
# process's action can be resumed this soon after it stopped.
BULK_LOCK_TTL_MS = 15_000
# How often an api process looks for bulk actions whose process stopped.
BULK_ADOPT_EVERY_S = BULK_LOCK_TTL_MS / 1000
# Jobs per batch (one listing page, then one Lua call per queue and type).
DEFAULT_BATCH = 200
# A preview counts at most this many matching jobs.
PREVIEW_MAX = 1_000_000


# The record, unless one exists under that id (a client's retried start).
CREATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class BulkStatus:
    id: str
    action: str
    filter: dict[str, Any]
    who: str
    state: str  # running, done or failed
    matched: int  # jobs the filter matched so far
    done: int  # jobs acted on
    skipped: int  # jobs the action did not apply to (already moved on)
    batches: int
    started_at_ms: int
    updated_at_ms: int
    finished_at_ms: int | None
    error: str

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
        self._adopter: asyncio.Task[None] | None = None
        self._stopping = False

    async def count(self, where: JobFilter) -> int:
        """How many jobs match now (a preview), reading pages of the listing."""
        total, cursor = 0, None
        while total < PREVIEW_MAX:
            page = await self.store.list(where=where, limit=BULK_BATCH_MAX, cursor=cursor)
            total += len(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            await asyncio.sleep(0)
        return total

    async def start(
        self, action: str, where: JobFilter, who: str, bulk_id: str | None = None
    ) -> BulkStatus:
        """Create the record and run it; an existing `bulk_id` is returned as it is
        (so a client retrying its start starts nothing twice)."""
        bulk_id = bulk_id or secrets.token_hex(8)
        at_ms = now_ms()
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
        }
        flat = [str(v) for pair in record.items() for v in pair]
        created = await self._create(keys=[keys.bulk_key(bulk_id)], args=[BULK_RECORD_TTL_S, *flat])
        if not created:
            existing = await self.get(bulk_id)
            assert existing is not None
            return existing
        await self.redis.zadd(keys.BULK_RUNNING, {bulk_id: at_ms})
        await audit.record(self.redis, who, f"bulk_{action}", "filter", 0, where.as_dict())
        self.spawn(bulk_id)
        status = await self.get(bulk_id)
        assert status is not None
        return status

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
            with contextlib.suppress(*REDIS_DOWN_ERRORS):  # Redis is down: next time
                await self.adopt()
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
            while True:
                page = await self.store.list(where=where, limit=self.batch, cursor=cursor)
                done, skipped = await self._act(status.action, page.items)
                cursor = page.next_cursor
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hincrby(key, "matched", len(page.items))
                    pipe.hincrby(key, "done", done)
                    pipe.hincrby(key, "skipped", skipped)
                    pipe.hincrby(key, "batches", 1)
                    pipe.hset(key, mapping={"cursor": cursor or "", "updated_at_ms": now_ms()})
                    pipe.pexpire(lock, BULK_LOCK_TTL_MS)
                    await pipe.execute()
                if cursor is None:
                    break
                await asyncio.sleep(0)  # let requests in between batches
            await self._finish(bulk_id, "done", "")
        except asyncio.CancelledError:
            raise  # the process stops: the cursor stays, for a resume
        except Exception as exc:  # a failed batch stops the action; it says why
            if self._stopping:
                return  # the process stops: the cursor stays, for a resume
            logger.exception("bulk action %s failed", bulk_id)
            await self._finish(bulk_id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                if (await self.redis.get(lock)) == token.encode():
                    await self.redis.delete(lock)

    async def _finish(self, bulk_id: str, state: str, error: str) -> None:
        key = keys.bulk_key(bulk_id)
        at_ms = now_ms()
        await self.redis.hset(  # type: ignore[misc]
            key,
            mapping={
                "state": state,
                "error": error,
                "finished_at_ms": at_ms,
                "updated_at_ms": at_ms,
            },
        )
        await self.redis.zrem(keys.BULK_RUNNING, bulk_id)
        status = await self.get(bulk_id)
        if status is not None:
            await audit.record(
                self.redis,
                status.who,
                f"bulk_{status.action}",
                f"bulk {bulk_id} {state}",
                status.done,
                {"filter": status.filter, "skipped": status.skipped, "error": error},
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
                keys.idempotency_key(j.job_type, j.idempotency_key, j.submitted_by)
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
