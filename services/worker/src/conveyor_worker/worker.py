"""Conveyor's arq worker: arq's `Worker` with the changes Conveyor needs, each explained.

- Pickup without polling lag: arq polls every `poll_delay`; here the worker
  waits on a wake-up (pub/sub on enqueue, a freed slot, the next deferred job
  falling due) with a slow poll as the safety net.
- Crash recovery in seconds: arq locks a running job for its timeout + 10 s;
  here the lock is short and renewed while the job runs.
- Redis faults: arq dies on the first Redis error; here every fault (down,
  hung, full, read-only, loading) is counted, logged once in a while, and the
  loop goes on, unready while it cannot claim. A full Redis refuses claims
  but lets running jobs finish, which frees memory. Each turn of the loop is
  bounded by the Redis socket timeout, rather than every single reply (see
  `create_redis`).
- One owner of a job's state: the claim, the wrapper's outcome and the
  settling of jobs arq ends without running (expired, unknown) are calls to
  the store, whose scripts also do arq's key bookkeeping; arq's own finishing
  steps are left with nothing to do.
- Finish and fetch: the store's script that ends a try also claims the
  slot's next job (`fetch`, `take`), so a busy worker refills a slot with no
  claim round trip and no turn of the poll loop; the poll loop fills the
  slots left free.
- Cancelling a running job goes through Conveyor's record and wake-up channel
  instead of arq's global abort set, which arq reads on every poll.
"""

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import time
from datetime import UTC, datetime, tzinfo
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func

from conveyor_core import keys
from conveyor_core.catalog import Catalog, JobModuleError, JobType, load_catalog
from conveyor_core.context import AnyHandler
from conveyor_core.jobs import JobError, now_ms
from conveyor_core.metrics import REDIS_UP, WORKER_HEARTBEAT
from conveyor_core.pubsub import Subscription
from conveyor_core.redaction import Redactor
from conveyor_core.redis import (
    REDIS_FAULT_ERRORS,
    RedisFault,
    create_redis,
    record_redis_fault,
    redis_fault,
)
from conveyor_core.schedule import Schedule
from conveyor_core.store import Claim, Claimed, Fetch, JobStore
from conveyor_core.workers import ANNOUNCE_EVERY_S, WorkerCard, announce, withdraw
from conveyor_worker.flow import ClaimMetrics
from conveyor_worker.resources import OpenResources, open_resources
from conveyor_worker.settings import Settings
from conveyor_worker.telemetry import declare_job_series
from conveyor_worker.wrapper import JobRunner

logger = logging.getLogger(__name__)

# After a failed poll, wait this long (doubling, up to the cap) before the next one.
OUTAGE_BACKOFF_S = 0.1
OUTAGE_BACKOFF_CAP_S = 2.0
# arq's own timeout is a backstop above the catalog's, which the wrapper enforces.
ARQ_TIMEOUT_GRACE_S = 5.0
# arq's heart_beat (its health record and cron) runs at most this often.
HEART_BEAT_INTERVAL_S = 0.1
# A poll reads at most this many due entries looking for unlocked ones.
CLAIM_SCAN_LIMIT = 1000
# Every this many seconds one worker trims index entries of expired jobs.
HOUSEKEEPING_INTERVAL_S = 10.0
# One housekeeping run stops after this long, even if entries are left.
HOUSEKEEPING_BUDGET_S = 2.0
# Closing the resources gets what is left of the shutdown wait, and at least this.
RESOURCE_CLOSE_MIN_S = 1.0
# The error a job gets when arq ended it before its function ran.
NOT_STARTED = JobError(
    type="NotStarted",
    message="the worker could not start the job (expired or unknown job type)",
).model_dump_json()


class CancelledBeforeStartError(Exception):
    """A client cancelled a claimed job before arq started its function."""


def _version() -> str:
    try:
        return version("conveyor-worker")
    except PackageNotFoundError:
        return ""


WORKER_VERSION = _version()


class ConveyorWorker(Worker):
    """arq's Worker with near-instant pickup, renewed job locks and outage survival."""

    def __init__(
        self,
        *args: Any,
        store: JobStore,
        idle_poll_s: float = 1.0,
        lock_ttl_s: float = 10.0,
        redis_timeout_s: float = 2.0,
        cancelled_retention_s: float = 86_400.0,
        **kwargs: Any,
    ) -> None:
        # When a signal asked the worker to stop (monotonic), for the resources' close.
        self.stop_requested_s: float | None = None
        # arq's poll loop then never sleeps by itself; _wait_for_work does.
        # arq's abort set is not used (see _cancel_aborted_jobs); arq's
        # on_job_start hook tells which claimed jobs arq really started.
        super().__init__(
            *args, poll_delay=0, allow_abort_jobs=False, on_job_start=self._started, **kwargs
        )
        self.store = store
        self.cancelled_retention_ms = int(cancelled_retention_s * 1000)
        # arq sizes the lock from the longest timeout; ours is short and renewed.
        self.in_progress_timeout_s = lock_ttl_s
        self.lock_ttl_s = lock_ttl_s
        self.idle_poll_s = idle_poll_s
        self.redis_timeout_s = redis_timeout_s
        # Monotonic time of the poll loop's last turn, and whether Redis answered it.
        self.last_poll_s = time.monotonic()
        self.redis_ok = False
        # Why the last poll failed, while it fails.
        self.redis_fault: RedisFault | None = None
        self._outage_backoff_s = 0.0
        self._wake = asyncio.Event()
        # Whether the next turn of the poll loop claims: not when the only news
        # is a deferred job's due time (then it only sets its timer).
        self._claim_due = True
        # When the next deferred job falls due, as the last claim or a
        # deferred job's wake-up said (ms), or None.
        self._next_due_ms: float | None = None
        self._abort_announced = False
        self._slot_wake_pending = False
        self._last_abort_check_s = 0.0
        self._last_heart_beat_s = 0.0
        self._heartbeat_gauge = WORKER_HEARTBEAT.labels(self.queue_name)
        self._background: list[asyncio.Task[None]] = []
        # Claimed jobs whose function arq started (its on_job_start hook ran).
        self._running: set[str] = set()
        # Claimed jobs a client cancelled before arq started them.
        self._cancel_before_start: set[str] = set()
        self._claim_metrics = ClaimMetrics(self.queue_name)
        # Slots passed on to a job claimed with the end of a try (finish and
        # fetch): the next task to end frees no semaphore slot and wakes no one.
        self._handovers = 0
        # The wrapper's way to the slot's next job (see fetch and take).
        self.ctx["next_jobs"] = self
        # This process's card in the registry of live workers (workers.py). In a
        # pod, HOSTNAME is the pod's name.
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        self.card = WorkerCard(
            name=f"{host}-{os.getpid()}",
            host=host,
            pid=os.getpid(),
            queue=self.queue_name,
            concurrency=self.max_jobs,
            version=WORKER_VERSION,
        )
        self._announced_s = 0.0

    async def main(self) -> None:
        # arq's main() needs Redis at once and dies without it; wait for it here,
        # inside the main task, so a signal during the wait still stops us.
        await self._wait_for_redis()
        # Woken on every "work may be here" message for our queue, and after a
        # gap in the subscription, when one may have been missed.
        wakeups = Subscription(
            self.pool,
            keys.wake_channel(self.queue_name),
            on_message=self._on_wake_message,
            on_gap=self._wake_to_claim,
        )
        wakeups.start()
        self._background = [
            asyncio.create_task(self._renew_locks()),
            asyncio.create_task(self._housekeeping()),
        ]
        try:
            await super().main()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await wakeups.stop()

    async def _wait_for_redis(self) -> None:
        backoff_s = OUTAGE_BACKOFF_S
        while True:
            try:
                async with self._bounded():
                    await self.pool.ping()
            except REDIS_FAULT_ERRORS as exc:
                logger.warning("redis unreachable at start, retrying in %.1f s: %s", backoff_s, exc)
                self.last_poll_s = time.monotonic()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, OUTAGE_BACKOFF_CAP_S)
            else:
                self.redis_ok = True
                return

    async def _poll_iteration(self) -> None:
        """Replaces arq's: claim and start due jobs, reap finished ones, then wait.

        arq reads up to 100 due ids and claims them one by one with a WATCH/MULTI
        transaction of four round trips each; here one Lua call claims a job for
        every free slot and says when the next deferred job falls due. The
        accounting (semaphore, job_counter, tasks) and the rest of the loop
        (aborts, heartbeat, cron) are arq's own.
        """
        # Cleared before the claim: a job enqueued from here on wakes the wait
        # below, so none waits for the safety-net poll.
        self._wake.clear()
        claim, self._claim_due = self._claim_due, False
        try:
            async with self._bounded():
                if claim:
                    self._next_due_ms = await self._claim_and_start()
                await self._cancel_aborted_jobs()
                for job_id, task in list(self.tasks.items()):
                    if task.done():
                        del self.tasks[job_id]
                        task.result()  # as arq does: errors in run_job surface here
                if time.monotonic() - self._last_heart_beat_s >= HEART_BEAT_INTERVAL_S:
                    # arq's health record and cron; its cron enqueues up to a second
                    # ahead, so a turn every tenth of a second misses no run.
                    self._last_heart_beat_s = time.monotonic()
                    await self.heart_beat()
                await self._announce()
        except REDIS_FAULT_ERRORS as exc:
            # arq lets a Redis error escape its poll loop and the worker dies;
            # here it is counted and logged (once in a while) and the loop goes on.
            self.redis_fault = redis_fault(exc) or RedisFault.UNREACHABLE
            self._claim_due = True
            record_redis_fault(self.redis_fault, exc, "the worker's poll")
            self.redis_ok = False
            self._outage_backoff_s = min(
                max(self._outage_backoff_s * 2, OUTAGE_BACKOFF_S), OUTAGE_BACKOFF_CAP_S
            )
            await asyncio.sleep(self._outage_backoff_s)
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
        timeout_s = self.idle_poll_s
        if self._next_due_ms is not None:
            timeout_s = max(0.0, min(timeout_s, (self._next_due_ms - now_ms()) / 1000))
        # A timeout context rather than wait_for: no task of its own per turn.
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            self._claim_due = True  # the safety-net poll, or a job fell due

    async def _announce(self) -> None:
        """At most once per ANNOUNCE_EVERY_S: this worker's card, with the jobs it runs."""
        at_s = time.monotonic()
        if at_s - self._announced_s < ANNOUNCE_EVERY_S:
            return
        self._announced_s = at_s
        self.card.running = sorted(self._running)
        await announce(self.pool, self.card)

    async def _claim_and_start(self) -> float | None:
        """Claim due jobs for the free slots and start them; return the next due time."""
        free = self.max_jobs - self.job_counter if self.allow_pick_jobs else 0
        if free <= 0 and self.allow_pick_jobs:
            # Every slot is busy (woken by an enqueue): nothing to claim, and a
            # freed slot wakes the loop anyway.
            return None
        claim = await self.store.claim(
            self.queue_name,
            free,
            lock_ttl_ms=int(self.in_progress_timeout_s * 1000),
            cancelled_retention_ms=self.cancelled_retention_ms,
            scan_limit=CLAIM_SCAN_LIMIT,
        )
        self._claim_metrics.record(claim)
        for job in claim.jobs:
            await self.sem.acquire()  # never waits: no more claimed than free slots
            self._start(job)
        # Paused: no next due time; resume wakes the worker.
        return claim.next_due_ms

    def _start(self, job: Claimed) -> None:
        """Run a claimed job in a task of its own, in a slot already taken for it."""
        self.job_counter += 1
        task = self.loop.create_task(self._run_claimed(job.job_id, job.score_ms))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        task.add_done_callback(lambda t: self._reap(job.job_id, t))
        self.tasks[job.job_id] = task

    def _reap(self, job_id: str, task: "asyncio.Task[None]") -> None:
        """Forget a task that ended well at once (arq leaves that to the poll loop,
        which, with finish and fetch, may not turn for a second); one that failed
        or was cancelled stays for the loop to surface, as arq does."""
        if not task.cancelled() and task.exception() is None and self.tasks.get(job_id) is task:
            del self.tasks[job_id]

    def fetch(self) -> Fetch | None:
        """With the end of a try, claim one job for the slot it frees, unless
        stopping (a job claimed after a stop signal would only be put back)."""
        if not self.allow_pick_jobs or self.stop_requested_s is not None:
            return None
        return Fetch(
            wanted=1,
            lock_ttl_ms=int(self.in_progress_timeout_s * 1000),
            cancelled_retention_ms=self.cancelled_retention_ms,
            scan_limit=CLAIM_SCAN_LIMIT,
        )

    def take(self, claim: Claim) -> None:
        """Start what a fetch claimed, in the slot of the try that just ended: that
        try's task frees no slot when it ends (see _release_sem_dec_counter_on_complete)."""
        self._claim_metrics.record(claim)
        for job in claim.jobs:
            self._handovers += 1
            self._start(job)

    def _bounded(self) -> asyncio.Timeout:
        """A time limit for one step of the worker's own Redis work."""
        return asyncio.timeout(self.redis_timeout_s)

    async def _started(self, ctx: dict[str, Any]) -> None:
        """arq's on_job_start: the function is about to run, unless cancelled already."""
        job_id = ctx["job_id"]
        if job_id in self._cancel_before_start:
            self._cancel_before_start.discard(job_id)
            raise CancelledBeforeStartError(job_id)
        self._running.add(job_id)

    async def _run_claimed(self, job_id: str, score: int) -> None:
        with contextlib.suppress(CancelledBeforeStartError):
            await self.run_job(job_id, score)
        if job_id in self._running:
            self._running.discard(job_id)
        else:
            # arq ended the job without running its function (expired, unknown
            # type, cancelled before it started): the claim started its record,
            # so settle it.
            await asyncio.shield(self._settle_unstarted(job_id))

    async def _settle_unstarted(self, job_id: str) -> None:
        try:
            async with self._bounded():
                state = await self.store.settle_unstarted(
                    self.queue_name, job_id, NOT_STARTED, self.cancelled_retention_ms
                )
        except REDIS_FAULT_ERRORS as exc:
            logger.warning("could not settle job %s, which never started: %s", job_id, exc)
        else:
            logger.info("job %s ended before it started: %s", job_id, state)

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        """Replaces arq's: the store's script that ended the try (complete,
        retrying, dead, cancelled, or back in the queue) did arq's bookkeeping
        too (queue entry, lock, retry count, job key expiry). arq's own step
        would undo a retry's new due time and delete the payload of a record
        that is still kept, so it does nothing here."""

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """Replaces arq's for jobs it ended before their function ran: the
        store's settle script does that bookkeeping (see _run_claimed)."""

    def _on_wake_message(self, data: bytes) -> None:
        if data.startswith(keys.DUE_MESSAGE):
            # A deferred job: nothing to claim yet, only maybe a sooner timer.
            due_ms = float(data[len(keys.DUE_MESSAGE) :])
            if self._next_due_ms is None or due_ms < self._next_due_ms:
                self._next_due_ms = due_ms
                self._wake.set()
            return
        if data == keys.ABORT_MESSAGE:
            self._abort_announced = True
        self._wake_to_claim()

    def _wake_to_claim(self) -> None:
        self._claim_due = True
        self._wake.set()

    async def _cancel_aborted_jobs(self) -> None:
        """Replaces arq's, which reads its global abort set on every poll: a
        cancel marks the job's record and announces 'abort' on the queue's
        wake-up channel; then (or once per idle_poll_s, as the safety net) the
        running jobs' records are read and the cancelled ones' tasks stopped.
        The wrapper records `cancelled` as the task ends."""
        now_s = time.monotonic()
        if not self._abort_announced and now_s - self._last_abort_check_s < self.idle_poll_s:
            return
        self._abort_announced = False
        self._last_abort_check_s = now_s
        claimed = list(self.tasks)
        if not claimed:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in claimed:
                pipe.hget(keys.job_key(job_id), "cancel_requested")
            flags = await pipe.execute()
        for job_id, flag in zip(claimed, flags, strict=True):
            if flag != b"1":
                continue
            task = self.job_tasks.get(job_id)
            if task is not None and not task.done():
                logger.info("cancelling job %s at a client's request", job_id)
                task.cancel()
            elif job_id not in self._running:
                self._cancel_before_start.add(job_id)

    def _release_sem_dec_counter_on_complete(self) -> None:
        if self._handovers:
            # This slot went to a job claimed with the end of a try (take): it
            # stays taken, and nothing needs waking.
            self._handovers -= 1
            self.job_counter -= 1
            return
        super()._release_sem_dec_counter_on_complete()
        # A slot is free: look for the next job at once. Slots that free up in
        # the same turn of the event loop are refilled by one poll. (Waiting 2 ms
        # for more to free up saved a claim call per ~3 jobs but left slots idle:
        # 0.77x bare arq's no-op throughput against 0.90x without the wait.)
        if not self._slot_wake_pending:
            self._slot_wake_pending = True
            self.loop.call_soon(self._slot_wake)

    def _slot_wake(self) -> None:
        self._slot_wake_pending = False
        self._wake_to_claim()

    async def _renew_locks(self) -> None:
        """Keep running jobs locked; a killed worker's locks lapse within lock_ttl_s."""
        ttl_ms = int(self.lock_ttl_s * 1000)
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running:
                continue
            try:
                async with self._bounded(), self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        pipe.pexpire(in_progress_key_prefix + job_id, ttl_ms)
                    await pipe.execute()
            except REDIS_FAULT_ERRORS as exc:
                logger.warning("could not renew job locks: %s", exc)

    async def _housekeeping(self) -> None:
        """Trim index entries whose job record expired; one worker at a time."""
        lock = keys.queue_key(self.queue_name, keys.HOUSEKEEPING_LOCK_SUFFIX)
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                async with asyncio.timeout(HOUSEKEEPING_BUDGET_S + self.redis_timeout_s):
                    await self._trim_once(lock)
            except REDIS_FAULT_ERRORS as exc:
                logger.warning("housekeeping skipped: %s", exc)

    async def _trim_once(self, lock: str) -> None:
        ttl_ms = int(HOUSEKEEPING_INTERVAL_S * 1000) - 100
        if not await self.pool.set(lock, b"1", nx=True, px=ttl_ms):
            return
        removed, deadline_s = 0, time.monotonic() + HOUSEKEEPING_BUDGET_S
        while time.monotonic() < deadline_s:
            trimmed = await self.store.trim_expired(self.queue_name)
            removed += trimmed
            if trimmed == 0:
                break
        if removed:
            logger.info("housekeeping: trimmed %d expired index entries", removed)

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        self.stop_requested_s = self.stop_requested_s or time.monotonic()
        super().handle_sig_wait_for_completion(signum)

    def handle_sig(self, signum: signal.Signals) -> None:
        self.stop_requested_s = self.stop_requested_s or time.monotonic()
        super().handle_sig(signum)

    def resource_close_budget_s(self) -> float:
        """What is left of the shutdown wait since the stop signal, at least a second."""
        wait_s = float(self._job_completion_wait)
        if self.stop_requested_s is not None:
            wait_s -= time.monotonic() - self.stop_requested_s
        return max(RESOURCE_CLOSE_MIN_S, wait_s)

    async def close(self) -> None:
        # Replaces arq's close(), which deletes its health key before on_shutdown
        # (with Redis down, on_shutdown never ran) and calls redis-py's
        # deprecated close(). The job modules' resources close after the jobs
        # ended, within what is left of the shutdown wait.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            async with self._bounded():
                await self.pool.delete(self.health_check_key)
                await withdraw(self.pool, self.card.name)
        except REDIS_FAULT_ERRORS as exc:
            logger.warning("redis unreachable during shutdown: %s", exc)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        resources: OpenResources | None = self.ctx.pop("open_resources", None)
        if resources is not None:
            await resources.close(self.resource_close_budget_s())
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


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


def arq_function(job_type: JobType, redact: Redactor, instrument: bool) -> Function:
    """Register a catalog job type with arq, under the wrapper."""
    runner = JobRunner(job_type, resolve_handler(job_type.handler), redact, instrument)
    coroutine = runner.run
    return func(
        coroutine,  # type: ignore[arg-type]  # arq's WorkerCoroutine wants ctx positional
        name=job_type.name,
        # One above the policy's, so the wrapper sees and records the last try.
        max_tries=job_type.retry.max_tries + 1,
        timeout=job_type.timeout_s + ARQ_TIMEOUT_GRACE_S,
        # The store keeps the result (as JSON, in the job's record); no pickle beside it.
        keep_result=0,
    )


class ZonedCronJob(CronJob):
    """arq's CronJob on one schedule's time zone: arq evaluates every entry on the
    worker's clock (UTC here); this one turns the time into its own zone first,
    so `hour=9` in Europe/Paris follows summer time."""

    zone: tzinfo = UTC

    def calculate_next(self, prev_run: datetime) -> None:
        super().calculate_next(prev_run.astimezone(self.zone))


def cron_entry(job_type: JobType, schedule: Schedule, runner: JobRunner) -> CronJob:
    entry = cron(
        runner.run,  # type: ignore[arg-type]  # as in arq_function
        name=job_type.name,
        **schedule.cron_fields(),  # type: ignore[arg-type]  # arq's fields, validated in Schedule
        max_tries=job_type.retry.max_tries + 1,
        timeout=job_type.timeout_s + ARQ_TIMEOUT_GRACE_S,
        keep_result=0,  # as in arq_function
    )
    zoned = ZonedCronJob(**vars(entry))
    zoned.zone = schedule.zone
    return zoned


def schedules_of(job_type: JobType, overrides: dict[str, tuple[Schedule, ...]]) -> list[Schedule]:
    """The job type's schedules, or CONVEYOR_SCHEDULES' for it; duplicates once."""
    schedules = overrides.get(job_type.name, job_type.schedules)
    return list(dict.fromkeys(schedules))


def cron_jobs(settings: Settings, job_types: list[JobType], redact: Redactor) -> list[CronJob]:
    """arq cron entries for the schedules of the job types on this worker's queue.

    arq's cron (run from the poll loop's heart_beat, which ConveyorWorker's
    _poll_iteration keeps calling) enqueues each run under the id
    `{name}:{scheduled ms}`; arq refuses an id whose job exists, so among many
    replicas one enqueue wins and the run happens once (two schedules of one
    job type that fall on the same instant make one run). A run is an
    ordinary job of its type: listed, retried, dead-lettered. Every entry of
    a job type carries the same function (arq keeps one per name).
    """
    overrides = settings.catalog.schedule_overrides()
    entries: list[CronJob] = []
    for job_type in job_types:
        schedules = schedules_of(job_type, overrides)
        if not schedules:
            continue
        runner = JobRunner(job_type, resolve_handler(job_type.handler), redact)
        for schedule in schedules:
            entries.append(cron_entry(job_type, schedule, runner))
            logger.info("job type %s runs on schedule %s", job_type.name, schedule)
    return entries


def worker_settings(settings: Settings, redis: ArqRedis, catalog: Catalog) -> dict[str, Any]:
    """arq `WorkerSettings` (as keyword arguments) built from typed settings."""
    job_types = catalog.for_queue(settings.queue)
    redact = Redactor(settings.observability.redacted)
    if not job_types:
        raise ValueError(f"the catalog has no job types on queue {settings.queue!r}")
    if settings.instrument_jobs:
        declare_job_series(job_types)

    store = JobStore(redis, catalog)

    async def on_startup(ctx: dict[str, Any]) -> None:
        """Open the job modules' resources; they live in `ctx` for the worker's
        life, and ConveyorWorker.close() closes them."""
        ctx["store"] = store
        ctx["catalog"] = catalog
        ctx["open_resources"] = opened = await open_resources(catalog, ctx["redis"])
        ctx["resources"] = opened.by_name

    return {
        "functions": [
            arq_function(job_type, redact, settings.instrument_jobs) for job_type in job_types
        ],
        "cron_jobs": cron_jobs(settings, job_types, redact),
        # Schedules mean UTC, whatever the machine's time zone.
        "timezone": UTC,
        "queue_name": settings.queue,
        "redis_pool": redis,
        # Job data is JSON, as the pool's (conveyor_core.serializer): never pickle.
        "job_serializer": redis.job_serializer,
        "job_deserializer": redis.job_deserializer,
        "store": store,
        "cancelled_retention_s": max(job_type.keep_result_s for job_type in job_types),
        "on_startup": on_startup,
        "max_jobs": settings.max_jobs,
        "idle_poll_s": settings.idle_poll_s,
        "lock_ttl_s": settings.lock_ttl_s,
        "redis_timeout_s": settings.redis.socket_timeout_s,
        # Let running jobs finish on SIGTERM; what does not finish is requeued.
        "job_completion_wait": settings.shutdown_wait_s,
        # arq's shared health key is useless per pod; /healthz replaces it.
        "health_check_interval": 3600,
    }


def create_worker(settings: Settings) -> ConveyorWorker:
    """Build the worker; call inside the event loop it will run on."""
    catalog = load_catalog(settings.catalog.modules)
    redis = create_redis(settings.redis, timeout_each_read=False)
    return ConveyorWorker(**worker_settings(settings, redis, catalog))
