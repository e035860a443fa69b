"""Conveyor's worker: its own loop around the store's claim, one try per task.

arq stays the wire format (its job key and queue, so a bare arq client can
enqueue), its `Retry` exception and its cron maths; the rest is the worker's:

- The loop: it waits on a wake-up (pub/sub on enqueue, a freed slot, the
  next deferred job or scheduled run falling due) with a slow poll as the
  safety net, and one Lua call claims a job for every free slot.
- Tries: one map of the running tries (job id -> `Try`); each runs in a task
  of its own through `Processor.process()` (process.py), which ends it with
  one call to the store. That call also claims the slot's next job (finish
  and fetch), so a busy worker refills a slot with no claim round trip.
- Fencing: each claim mints a token per try, held by the job's lock and
  record; the try's end, progress and lock renewals carry it, and a stale
  try's calls are refused (fencing.py).
- Crash recovery in seconds: a job's lock is short and renewed while it runs.
- Cancels: Conveyor's (the record's flag, announced by an 'abort' wake-up)
  and arq's client abort (its abort set), read for the running tries at most
  once per idle poll unless announced.
- Redis faults: every fault (down, hung, full, read-only, loading) is counted,
  logged once in a while, and the loop goes on, unready while it cannot
  claim. A full Redis refuses claims but lets running jobs finish, which
  frees memory. Each turn of the loop is bounded by the Redis socket timeout.
- SIGTERM drains: no more claims, running tries may finish within
  `shutdown_wait_s`, what does not is put back (its try not counted); then
  the job modules' resources close within what is left of that wait.
"""

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import signal
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from redis.exceptions import RedisError

from conveyor_core import claimcheck, keys
from conveyor_core.catalog import Catalog, JobModuleError, JobType, load_catalog
from conveyor_core.cluster import ClusterClient
from conveyor_core.context import AnyHandler
from conveyor_core.fencing import Fence
from conveyor_core.functions import delete_unused_libraries
from conveyor_core.jobs import now_ms
from conveyor_core.metrics import REDIS_UP, WORKER_HEARTBEAT
from conveyor_core.redaction import Redactor
from conveyor_core.redis import (
    REDIS_FAULT_ERRORS,
    RedisFault,
    connect,
    record_redis_fault,
    redis_fault,
)
from conveyor_core.schedule import Schedule
from conveyor_core.shardpubsub import ShardSubscription
from conveyor_core.store import Claim, Claimed, Fetch, JobStore
from conveyor_core.workers import ANNOUNCE_EVERY_S, WorkerCard, announce, withdraw
from conveyor_worker.cron import Scheduler
from conveyor_worker.flow import ClaimMetrics
from conveyor_worker.policy import Stop
from conveyor_worker.process import Processor, Try
from conveyor_worker.resources import OpenResources, open_resources
from conveyor_worker.settings import Settings
from conveyor_worker.telemetry import declare_job_series

logger = logging.getLogger(__name__)

# After a failed turn, wait this long (doubling, up to the cap) before the next one.
OUTAGE_BACKOFF_S = 0.1
OUTAGE_BACKOFF_CAP_S = 2.0
# A claim reads at most this many due entries looking for unlocked ones.
CLAIM_SCAN_LIMIT = 1000
# An arq abort no worker acted on within this long (its job had ended, or its
# queue has no worker) leaves arq's abort set: arq's own age limit for it.
ABORT_MAX_AGE_S = 60
# Every this many seconds one worker trims index entries of expired jobs.
HOUSEKEEPING_INTERVAL_S = 10.0
# One housekeeping run stops after this long, even if entries are left.
HOUSEKEEPING_BUDGET_S = 2.0
# What leaves an outbox's drain for the next round (its entries stay leased or due).
OUTBOX_FAULTS: tuple[type[Exception], ...] = (TimeoutError, *REDIS_FAULT_ERRORS)
# Every this many seconds one worker deletes job blobs whose record is gone.
BLOB_SWEEP_INTERVAL_S = 600.0
# Every this many seconds one worker deletes function libraries no process uses.
LIBRARY_SWEEP_INTERVAL_S = 600.0
# Closing the resources gets what is left of the shutdown wait, and at least this.
RESOURCE_CLOSE_MIN_S = 1.0


def _version() -> str:
    try:
        return version("conveyor-worker")
    except PackageNotFoundError:
        return ""


WORKER_VERSION = _version()


class ConveyorWorker:
    """Claims and runs the jobs of one queue; see the module's docstring."""

    def __init__(
        self,
        *,
        redis_pool: ArqRedis,
        store: JobStore,
        queue_name: str,
        handlers: dict[str, AnyHandler],
        schedules: list[tuple[JobType, Schedule]] | None = None,
        redact: Redactor | None = None,
        instrument: bool = True,
        max_jobs: int = 10,
        idle_poll_s: float = 1.0,
        lock_ttl_s: float = 10.0,
        redis_timeout_s: float = 2.0,
        cancelled_retention_s: float = 86_400.0,
        shutdown_wait_s: float = 20.0,
        library_max_unseen_s: float = 86_400.0,
        handle_signals: bool = True,
        burst: bool = False,
    ) -> None:
        self.pool = redis_pool
        self.store = store
        self.queue_name = queue_name
        self.max_jobs = max_jobs
        self.idle_poll_s = idle_poll_s
        self.lock_ttl_s = lock_ttl_s
        self.redis_timeout_s = redis_timeout_s
        self.cancelled_retention_ms = int(cancelled_retention_s * 1000)
        self.shutdown_wait_s = shutdown_wait_s
        self.library_max_unseen_s = library_max_unseen_s
        self.handle_signals = handle_signals
        # Stop once nothing is left to claim or run (tests, one-off drains).
        self.burst = burst
        self.processor = Processor(
            queue_name,
            store,
            store.catalog,
            handlers,
            redact=redact,
            instrument=instrument,
            cancelled_retention_ms=self.cancelled_retention_ms,
        )
        self.processor.next_jobs = self
        self.processor.stopping = lambda: self._stopping
        self.scheduler = Scheduler(store, schedules or [], datetime.now(UTC))
        # The one map of running tries: job id -> its Try.
        self.running: dict[str, Try] = {}
        # When a signal asked the worker to stop (monotonic).
        self.stop_requested_s: float | None = None
        self._stopping = False
        # Monotonic time of the loop's last turn, and whether Redis answered it.
        self.last_poll_s = time.monotonic()
        self.redis_ok = False
        # Why the last turn failed, while it fails.
        self.redis_fault: RedisFault | None = None
        self._outage_backoff_s = 0.0
        self._wake = asyncio.Event()
        # The queue's shards (keys.shard_name), each with its own wake-up
        # channel; a queue of one shard is claimed whatever this says.
        self.shards = store.catalog.shards(queue_name)
        # Shards that may hold due jobs: woken, timed out, or not drained by
        # their last claim. A claim visits only these.
        self._due_shards = set(self.shards)
        # Where the next claim starts, so that no shard always comes first.
        self._next_shard = 0
        # When a claim last visited every shard (monotonic): at least once per
        # idle_poll_s, busy or not, so a dead worker's job on a quiet shard is
        # found within its lock's TTL and a poll, as on a queue of one shard.
        self._swept_s = 0.0
        # Tries ended with a fetch asked for: every len(shards)-th gives way
        # (see fetch).
        self._fetches = 0
        # One subscription per shard's wake-up channel, while main() runs.
        self.wakeups: list[ShardSubscription] = []
        # Whether the next turn claims: not when the only news is a deferred
        # job's due time (then it only sets its timer).
        self._claim_due = True
        # When the next deferred job falls due, as the last claim or a
        # deferred job's wake-up said (ms), or None.
        self._next_due_ms: float | None = None
        self._abort_announced = False
        # Shards whose outbox of continuations (a cluster's: store/groups.py)
        # may hold entries: announced, or every housekeeping round.
        self._outbox_shards: set[str] = set(self.shards)
        self._outbox_due = asyncio.Event()
        self._slot_wake_pending = False
        # Tries whose end found nothing due to fetch: their freed slot needs no claim.
        self._slots_left_idle = 0
        self._last_abort_check_s = 0.0
        self._heartbeat_gauge = WORKER_HEARTBEAT.labels(queue_name)
        self._claim_metrics = ClaimMetrics(queue_name)
        self._resources: OpenResources | None = None
        self._signals_installed = False
        # This process's card in the registry of live workers (workers.py). In a
        # pod, HOSTNAME is the pod's name.
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        self.card = WorkerCard(
            name=f"{host}-{os.getpid()}",
            host=host,
            pid=os.getpid(),
            queue=queue_name,
            concurrency=max_jobs,
            version=WORKER_VERSION,
        )
        self._announced_s = 0.0

    # -- the loop -------------------------------------------------------------

    async def main(self) -> None:
        """Run until a stop signal (or, in burst mode, until idle), then drain."""
        if self.handle_signals:
            self.install_signal_handlers()
        await self._wait_for_redis()
        if self._stopping:
            return
        await self.startup()
        # Woken on every "work may be here" message of each shard of our queue,
        # and after a gap in a subscription, when one may have been missed.
        self.wakeups = wakeups = [
            ShardSubscription(
                self.pool,
                keys.wake_channel(shard),
                on_message=functools.partial(self._on_wake_message, shard=shard),
                on_gap=self._wake_every_shard,
            )
            for shard in self.shards
        ]
        for wakeup in wakeups:
            wakeup.start()
        background = [
            asyncio.create_task(self._renew_locks()),
            asyncio.create_task(self._housekeeping()),
        ]
        if self.store.one_slot_per_call:  # only a cluster's groups use an outbox
            self._outbox_due.set()
            background.append(asyncio.create_task(self._drain_outboxes()))
        try:
            while not self._stopping:
                await self._turn()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for wakeup in wakeups:
                await wakeup.stop()

    async def startup(self) -> None:
        """Open the job modules' resources; they live for the worker's life, and
        close() closes them."""
        if self._resources is None:
            self._resources = await open_resources(self.store.catalog, self.pool)
            self.processor.resources = self._resources.by_name

    @property
    def started(self) -> bool:
        """Whether the job modules' resources are open (until close())."""
        return self._resources is not None

    async def _wait_for_redis(self) -> None:
        backoff_s = OUTAGE_BACKOFF_S
        while not self._stopping:
            try:
                async with self._bounded():
                    await self.pool.ping()
            except REDIS_FAULT_ERRORS as exc:
                logger.warning("redis unreachable at start, retrying in %.1f s: %s", backoff_s, exc)
                self.last_poll_s = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff_s):
                        await self._wake.wait()
                self._wake.clear()
                backoff_s = min(backoff_s * 2, OUTAGE_BACKOFF_CAP_S)
            else:
                self.redis_ok = True
                return

    async def _turn(self) -> None:
        """One turn: claim for the free slots, check cancels, submit scheduled
        runs, announce this worker; then wait for a wake-up or the next timer."""
        # Cleared before the claim: a job enqueued from here on wakes the wait
        # below, so none waits for the safety-net poll.
        self._wake.clear()
        claim, self._claim_due = self._claim_due, False
        claimed = 0
        try:
            async with self._bounded():
                if claim:
                    claimed = await self._claim_and_start()
                await self._check_cancels()
                await self.scheduler.submit_due(datetime.now(UTC))
                await self._announce()
        except REDIS_FAULT_ERRORS as exc:
            # Counted and logged (once in a while); the loop goes on.
            self.redis_fault = redis_fault(exc) or RedisFault.UNREACHABLE
            self._wake_every_shard()
            record_redis_fault(self.redis_fault, exc, "the worker's poll")
            self.redis_ok = False
            self._outage_backoff_s = min(
                max(self._outage_backoff_s * 2, OUTAGE_BACKOFF_S), OUTAGE_BACKOFF_CAP_S
            )
            await self._sleep(self._outage_backoff_s)
            return
        else:
            if not self.redis_ok:
                logger.info("redis answers again, taking jobs")
            self.redis_ok, self.redis_fault = True, None
            self._outage_backoff_s = 0.0
        finally:
            self.last_poll_s = time.monotonic()
            self._heartbeat_gauge.set_to_current_time()
            # Up means answering: a full or read-only Redis answers.
            down = self.redis_fault in (RedisFault.UNREACHABLE, RedisFault.TIMED_OUT)
            REDIS_UP.set(0 if down else 1)
        if self.burst and claim and not claimed and not self.running:
            self._stopping = True  # nothing left to claim or run
            return
        timeout_s = self.idle_poll_s
        if self._next_due_ms is not None:
            timeout_s = min(timeout_s, (self._next_due_ms - now_ms()) / 1000)
        if (submit_s := self.scheduler.next_submit_s()) is not None:
            timeout_s = min(timeout_s, submit_s - time.time())
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._wake.wait()
        except TimeoutError:
            # The safety-net poll, or a job or a run fell due (on any shard).
            self._claim_due = True
            self._due_shards.update(self.shards)

    async def _sleep(self, delay_s: float) -> None:
        """Sleep, unless a stop signal comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                while not self._stopping:
                    self._wake.clear()
                    await self._wake.wait()

    def _bounded(self) -> asyncio.Timeout:
        """A time limit for one step of the worker's own Redis work."""
        return asyncio.timeout(self.redis_timeout_s)

    async def _announce(self) -> None:
        """At most once per ANNOUNCE_EVERY_S: this worker's card, with the jobs it runs."""
        at_s = time.monotonic()
        if at_s - self._announced_s < ANNOUNCE_EVERY_S:
            return
        self._announced_s = at_s
        self.card.running = sorted(self.running)
        await announce(self.pool, self.card)
        await self.store.functions.still_used()  # at most every few minutes

    # -- slots and tries ------------------------------------------------------

    async def _claim_and_start(self) -> int:
        """Claim due jobs for the free slots and start them; how many it started.
        Over several shards: one claim per due shard, starting one shard further
        each time, until the slots are full; a shard whose claim left slots
        free is drained until its next wake-up."""
        free = self.max_jobs - len(self.running)
        if free <= 0:
            # Every slot is busy (woken by an enqueue): nothing to claim, and a
            # freed slot wakes the loop anyway.
            return 0
        count = len(self.shards)
        start, self._next_shard = self._next_shard, (self._next_shard + 1) % count
        if time.monotonic() - self._swept_s >= self.idle_poll_s:
            self._due_shards.update(self.shards)
            self._swept_s = time.monotonic()
        order = [self.shards[(start + i) % count] for i in range(count)]
        visited = [shard for shard in order if count == 1 or shard in self._due_shards]
        # Paused: no next due time; resume wakes the worker.
        next_due = [] if len(visited) == count or self._next_due_ms is None else [self._next_due_ms]
        started = 0
        for shard in visited:
            wanted = free - started
            if wanted <= 0:
                break
            claim = await self.store.claim(
                shard,
                wanted,
                lock_ttl_ms=int(self.lock_ttl_s * 1000),
                cancelled_retention_ms=self.cancelled_retention_ms,
                scan_limit=CLAIM_SCAN_LIMIT,
            )
            self._claim_metrics.record(claim)
            for job in claim.jobs:
                self._start(job)
            started += len(claim.jobs)
            if len(claim.jobs) < wanted:
                self._due_shards.discard(shard)
            if claim.next_due_ms is not None:
                next_due.append(claim.next_due_ms)
        self._next_due_ms = min(next_due, default=None)
        return started

    def _start(self, job: Claimed) -> None:
        """Run a claimed try in a task of its own."""
        try_ = Try(job, Fence(self.queue_name, job.job_id, job.token))
        self.running[job.job_id] = try_
        try_.task = asyncio.create_task(self._run(try_), name=f"job {job.job_id}")

    async def _run(self, try_: Try) -> None:
        try:
            await self.processor.process(try_)
        except Exception:
            logger.exception("job %s: the worker failed around its try", try_.job_id)
        finally:
            # The same id may be running again already (claimed with this end).
            if self.running.get(try_.job_id) is try_:
                del self.running[try_.job_id]
            if self._slots_left_idle:
                self._slots_left_idle -= 1  # its end saw nothing due (see take)
            elif not self._stopping and len(self.running) < self.max_jobs:
                self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot is free: look for the next job at once. Slots that free up in
        the same turn of the event loop are refilled by one claim."""
        if not self._slot_wake_pending:
            self._slot_wake_pending = True
            asyncio.get_running_loop().call_soon(self._slot_wake)

    def _slot_wake(self) -> None:
        self._slot_wake_pending = False
        self._wake_to_claim()

    def fetch(self) -> Fetch | None:
        """With the end of a try, claim one job for the slot it frees, unless
        stopping (a job claimed after a stop signal would only be put back)."""
        if self._stopping:
            return None
        if len(self._due_shards) > 1:
            # Others shards wait too: every len(shards)-th end gives way, its
            # slot claimed in turn (a busy slot's fetch keeps to its shard).
            self._fetches += 1
            if self._fetches % len(self.shards) == 0:
                return None
        return Fetch(
            wanted=1,
            lock_ttl_ms=int(self.lock_ttl_s * 1000),
            cancelled_retention_ms=self.cancelled_retention_ms,
            scan_limit=CLAIM_SCAN_LIMIT,
        )

    def take(self, claim: Claim) -> None:
        """Start what a fetch claimed, in the slot of the try that just ended.
        When it found nothing due, the slot waits for a wake-up or the next due
        time, as after an empty claim: no claim of its own (the try's task ends
        right after this, with no await in between)."""
        self._claim_metrics.record(claim)
        for job in claim.jobs:
            self._start(job)
        if not claim.jobs:
            if claim.next_due_ms is not None:
                self._due_at(claim.next_due_ms)
            self._due_shards.discard(claim.shard)
            if len(self.shards) > 1 and self._due_shards:
                return  # its shard is drained, others may not be: the slot claims
            self._slots_left_idle += 1

    def _stop_try(self, try_: Try, stop: Stop) -> None:
        """Stop a try: before its handler starts, it never runs; while it runs,
        its task is cancelled; once its handler returned, it ends as decided."""
        if try_.stop is not None:
            return
        try_.stop = stop
        if try_.in_handler and try_.task is not None:
            try_.task.cancel()

    # -- wake-ups and cancels -------------------------------------------------

    def _on_wake_message(self, data: bytes, shard: str | None = None) -> None:
        """A message on a shard's wake-up channel (shard 0's when not named)."""
        if data.startswith(keys.DUE_MESSAGE):
            # A deferred job: nothing to claim yet, only maybe a sooner timer.
            self._due_at(float(data[len(keys.DUE_MESSAGE) :]))
            return
        if data == keys.OUTBOX_MESSAGE:
            # A group's continuation of another slot waits in the shard's outbox.
            self._outbox_shards.add(shard or self.queue_name)
            self._outbox_due.set()
            return
        if data == keys.ABORT_MESSAGE:
            self._abort_announced = True
        self._due_shards.add(shard or self.queue_name)
        self._wake_to_claim()

    def _due_at(self, due_ms: float) -> None:
        """A job falls due then: set the loop's timer, if sooner."""
        if self._next_due_ms is None or due_ms < self._next_due_ms:
            self._next_due_ms = due_ms
            self._wake.set()

    def _wake_to_claim(self) -> None:
        self._claim_due = True
        self._wake.set()

    def _wake_every_shard(self) -> None:
        """Claim from every shard: a wake-up may have been missed."""
        self._due_shards.update(self.shards)
        self._wake_to_claim()

    async def _check_cancels(self) -> None:
        """Stop the tries a client cancelled: Conveyor's cancel marks the record
        and announces 'abort' on the queue's wake-up channel; arq's client
        abort adds the id to arq's abort set. Both are read when announced or
        once per idle_poll_s (the safety net, and the only way to hear arq's
        abort). A running try ends `cancelled`; a job of this queue that
        arq's client aborted while it waits is cancelled where it waits."""
        now_s = time.monotonic()
        if not self._abort_announced and now_s - self._last_abort_check_s < self.idle_poll_s:
            return
        self._abort_announced = False
        self._last_abort_check_s = now_s
        ids = list(self.running)
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job_key(job_id), "cancel_requested")
            pipe.zrange(abort_jobs_ss, 0, -1, withscores=True)
            *flags, aborts = await pipe.execute()
        aborted = {raw.decode(): score for raw, score in aborts}
        by_arq = [job_id for job_id in ids if job_id in aborted]
        if by_arq:
            await self.pool.zrem(abort_jobs_ss, *by_arq)
        for job_id, flag in zip(ids, flags, strict=True):
            try_ = self.running.get(job_id)
            if try_ is not None and (flag == b"1" or job_id in by_arq):
                logger.info("cancelling job %s at a client's request", job_id)
                self._stop_try(try_, Stop.CANCELLED)
        if waiting := {i: score for i, score in aborted.items() if i not in self.running}:
            await self._cancel_aborted_waiting(waiting)

    async def _cancel_aborted_waiting(self, aborted: dict[str, float]) -> None:
        """arq's client aborted these jobs (id -> when, ms) and none runs here:
        those waiting in this queue are cancelled as Conveyor's cancel does
        (one taken by a worker meanwhile is asked to stop). A bare arq worker
        cancels such a job as it takes it, so `abort()` answers `True` alike.
        Other ids (a job that had ended, another queue's) are left to their
        queue's workers, and dropped after ABORT_MAX_AGE_S."""
        by_shard: dict[str, list[str]] = {}
        for job_id in aborted:  # an id without a tag (a bare arq client's) is on shard 0
            shard = keys.queue_of(job_id) or self.queue_name
            if shard in self.shards:
                by_shard.setdefault(shard, []).append(job_id)
        waiting: list[str] = []
        for shard, ids in by_shard.items():
            scores = await self.pool.zmscore(shard, ids)
            waiting += [
                job_id for job_id, score in zip(ids, scores, strict=True) if score is not None
            ]
        for job_id in waiting:
            outcome, _ = await self.store.cancel(job_id)
            logger.info("job %s aborted by arq's client while it waited: %s", job_id, outcome)
        oldest_ms = now_ms() - ABORT_MAX_AGE_S * 1000
        stale = [job_id for job_id, at_ms in aborted.items() if at_ms < oldest_ms]
        if waiting or stale:
            await self.pool.zrem(abort_jobs_ss, *waiting, *stale)

    # -- background: locks and housekeeping -----------------------------------

    async def _renew_locks(self) -> None:
        """Keep running tries locked (a killed worker's locks lapse within
        lock_ttl_s); a stale try's renewal is refused and counted."""
        ttl_ms = int(self.lock_ttl_s * 1000)
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            tries = [(t.job_id, t.fence.token) for t in self.running.values()]
            if not tries:
                continue
            try:
                async with self._bounded():
                    stale = await self.store.renew_locks(tries, ttl_ms, self.queue_name)
            except REDIS_FAULT_ERRORS as exc:
                logger.warning("could not renew job locks: %s", exc)
                continue
            for job_id in stale:
                if (try_ := self.running.get(job_id)) is not None:
                    try_.fence.refused("renew")

    async def _drain_outboxes(self) -> None:
        """Start the continuations waiting in our shards' outboxes (a
        cluster's: a group's last member's end puts one there when it joins
        another slot), each in its own slot. Every worker of a shard hears the
        announcement; the outbox leases what one takes, and a continuation is
        started once however many ask (store/groups.py, drain_outbox)."""
        while True:
            await self._outbox_due.wait()
            self._outbox_due.clear()
            shards, self._outbox_shards = self._outbox_shards, set()
            for shard in shards:
                try:
                    async with asyncio.timeout(HOUSEKEEPING_BUDGET_S + self.redis_timeout_s):
                        await self.store.drain_outbox(shard)
                except OUTBOX_FAULTS as exc:
                    # Left leased or due: the next round (housekeeping's) takes it.
                    logger.warning("outbox of %s not drained: %s", shard, exc)
                except Exception:  # a bug must not end the drains of every later group
                    logger.exception("outbox of %s not drained", shard)

    async def _housekeeping(self) -> None:
        """Trim index entries whose job record expired; one worker at a time
        per shard. On a cluster, look at the outboxes too: an entry whose
        taker died is due again once its lease ends."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            if self.store.one_slot_per_call:
                self._outbox_shards.update(self.shards)
                self._outbox_due.set()
            for shard in self.shards:
                try:
                    async with asyncio.timeout(HOUSEKEEPING_BUDGET_S + self.redis_timeout_s):
                        await self._trim_once(shard)
                except REDIS_FAULT_ERRORS as exc:
                    logger.warning("housekeeping skipped: %s", exc)
            await self._sweep_blobs()
            await self._delete_unused_libraries()

    async def _trim_once(self, shard: str) -> None:
        lock = keys.queue_key(shard, keys.HOUSEKEEPING_LOCK_SUFFIX)
        ttl_ms = int(HOUSEKEEPING_INTERVAL_S * 1000) - 100
        if not await self.pool.set(lock, b"1", nx=True, px=ttl_ms):
            return
        removed, deadline_s = 0, time.monotonic() + HOUSEKEEPING_BUDGET_S
        while time.monotonic() < deadline_s:
            trimmed = await self.store.trim_expired(shard)
            removed += trimmed
            if trimmed == 0:
                break
        if removed:
            logger.info("housekeeping: trimmed %d expired index entries", removed)

    async def _sweep_blobs(self) -> None:
        """Delete offloaded payloads and results whose job record is gone (its
        retention ran out, or it was deleted): one worker, every so often."""
        blobs = self.store.blobs
        if blobs is None or not any(
            t.offload_above_bytes is not None for t in self.processor.job_types.values()
        ):
            return
        lock = keys.PREFIX + "blob-sweep-lock"
        try:
            if not await self.pool.set(lock, b"1", nx=True, px=int(BLOB_SWEEP_INTERVAL_S * 1000)):
                return
            deleted = await claimcheck.sweep(blobs, self.pool)
        except Exception as exc:  # Redis' or the store's fault: the next sweep tries again
            logger.warning("blob sweep skipped: %s", exc)
            return
        if deleted:
            logger.info("housekeeping: deleted %d blobs of jobs whose record is gone", deleted)

    async def _delete_unused_libraries(self) -> None:
        """Delete the function libraries of versions no process has run for
        `library_max_unseen_s` (functions.py): one worker, every so often."""
        try:
            lock_ms = int(LIBRARY_SWEEP_INTERVAL_S * 1000)
            if not await self.pool.set(keys.FUNCTION_LIBRARIES_LOCK, b"1", nx=True, px=lock_ms):
                return
            async with self._bounded():
                deleted = await delete_unused_libraries(
                    self.pool, self.store.functions.name, self.library_max_unseen_s
                )
        except (RedisError, TimeoutError) as exc:  # Redis' fault: the next sweep tries again
            logger.warning("function library sweep skipped: %s", exc)
            return
        if deleted:
            logger.info("housekeeping: deleted unused function libraries %s", ", ".join(deleted))

    # -- stopping -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain the worker; a second signal cuts the drain short."""
        if self._signals_installed:
            return
        self._signals_installed = True
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)

    def request_stop(self, signum: int | None = None) -> None:
        """Stop claiming and drain: running tries may finish within shutdown_wait_s."""
        if self._stopping and self.stop_requested_s is not None:
            logger.info("second stop signal: cutting running jobs short")
            for try_ in list(self.running.values()):
                self._stop_try(try_, Stop.SHUTDOWN)
            return
        name = signal.Signals(signum).name if signum else "a stop request"
        logger.info("%s: stopping; %d running job(s) may finish", name, len(self.running))
        self.stop_requested_s = time.monotonic()
        self._stopping = True
        self._wake.set()

    async def _drain(self) -> None:
        """Let running tries finish within what is left of shutdown_wait_s; put
        back what does not (its try not counted)."""
        started_s = self.stop_requested_s or time.monotonic()
        while self.running:
            tasks = [t.task for t in self.running.values() if t.task is not None]
            left_s = self.shutdown_wait_s - (time.monotonic() - started_s)
            _, pending = await asyncio.wait(tasks, timeout=max(left_s, 0))
            if pending and self.running:
                logger.info("cutting %d running job(s) short; they run again", len(pending))
                for try_ in list(self.running.values()):
                    self._stop_try(try_, Stop.SHUTDOWN)
                await asyncio.gather(*pending, return_exceptions=True)

    def resource_close_budget_s(self) -> float:
        """What is left of the shutdown wait since the stop signal, at least a second."""
        wait_s = self.shutdown_wait_s
        if self.stop_requested_s is not None:
            wait_s -= time.monotonic() - self.stop_requested_s
        return max(RESOURCE_CLOSE_MIN_S, wait_s)

    async def close(self) -> None:
        """After main(): withdraw this worker's card, close the job modules'
        resources (after the jobs ended, within what is left of the shutdown
        wait) and the Redis connections."""
        self._stopping = True
        await self._drain()
        try:
            async with self._bounded():
                await withdraw(self.pool, self.card.name)
        except REDIS_FAULT_ERRORS as exc:
            logger.warning("redis unreachable during shutdown: %s", exc)
        if self._resources is not None:
            await self._resources.close(self.resource_close_budget_s())
            self._resources = None
        if isinstance(self.pool, ClusterClient):
            await self.pool.aclose()  # its connections to every node
        else:
            await self.pool.aclose(close_connection_pool=True)


def resolve_handler(path: str) -> AnyHandler:
    """`"package.module:function"` -> the function."""
    module_name, _, name = path.partition(":")
    try:
        handler: AnyHandler = getattr(importlib.import_module(module_name), name)
    except Exception as exc:
        raise JobModuleError(
            module_name, f"handler {path!r} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(handler):
        raise JobModuleError(module_name, f"handler {path!r} is not callable")
    return handler


def schedules_of(job_type: JobType, overrides: dict[str, tuple[Schedule, ...]]) -> list[Schedule]:
    """The job type's schedules, or CONVEYOR_SCHEDULES' for it; duplicates once."""
    schedules = overrides.get(job_type.name, job_type.schedules)
    return list(dict.fromkeys(schedules))


def cron_schedules(settings: Settings, job_types: list[JobType]) -> list[tuple[JobType, Schedule]]:
    """The schedules of the job types on this worker's queue (see cron.py). Two
    schedules of one job type that fall on the same instant make one run."""
    overrides = settings.catalog.schedule_overrides()
    entries: list[tuple[JobType, Schedule]] = []
    for job_type in job_types:
        for schedule in schedules_of(job_type, overrides):
            entries.append((job_type, schedule))
            logger.info("job type %s runs on schedule %s", job_type.name, schedule)
    return entries


def worker_settings(settings: Settings, redis: ArqRedis, catalog: Catalog) -> dict[str, Any]:
    """ConveyorWorker's keyword arguments, built from typed settings."""
    job_types = catalog.for_queue(settings.queue)
    if not job_types:
        raise ValueError(f"the catalog has no job types on queue {settings.queue!r}")
    if settings.instrument_jobs:
        declare_job_series(job_types)
    return {
        "redis_pool": redis,
        "store": JobStore(redis, catalog, blobs=claimcheck.open_blob_store(settings.blobs)),
        "queue_name": settings.queue,
        "handlers": {t.name: resolve_handler(t.handler) for t in job_types},
        "schedules": cron_schedules(settings, job_types),
        "redact": Redactor(settings.observability.redacted),
        "instrument": settings.instrument_jobs,
        "cancelled_retention_s": max(job_type.keep_result_s for job_type in job_types),
        "max_jobs": settings.max_jobs,
        "idle_poll_s": settings.idle_poll_s,
        "lock_ttl_s": settings.lock_ttl_s,
        "redis_timeout_s": settings.redis.socket_timeout_s,
        # Let running jobs finish on SIGTERM; what does not finish is put back.
        "shutdown_wait_s": settings.shutdown_wait_s,
        "library_max_unseen_s": settings.function_library_max_unseen_s,
    }


def create_worker(settings: Settings) -> ConveyorWorker:
    """Build the worker; call inside the event loop it will run on."""
    catalog = load_catalog(settings.catalog.modules)
    # A node's client or a cluster's (REDIS_URL says which); the cluster's
    # carries what this code reads from arq's (cluster.py), and every call
    # keeps to one slot (keys.py).
    redis = cast(ArqRedis, connect(settings.redis, timeout_each_read=False))
    return ConveyorWorker(**worker_settings(settings, redis, catalog))
