"""One try of one job, top to bottom: `Processor.process()`.

What the claim returned (id, try, token, arq's job bytes) -> decode -> the
cases where the handler never runs (the job's data gone or not valid, its type
unknown here, cancelled or stopped before it started, no tries left, an
invalid payload) -> the handler under its job type's timeout -> the policy's
decision (policy.py) -> exactly one end-of-try call to the store, carrying the
try's token, so a stale try (its lock lapsed and the job was claimed again)
changes nothing. That end also claims the slot's next job (finish and fetch,
through the worker's `NextJobs`). Spans, log lines and metrics come from
telemetry.JobObservation; handlers contain business logic only.
"""

import asyncio
import json
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from conveyor_core import claimcheck
from conveyor_core.catalog import Catalog, JobType
from conveyor_core.checkpoint import Interrupted
from conveyor_core.context import AnyHandler, JobContext
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobError, JobState, now_ms
from conveyor_core.redaction import Redactor, clean, clean_traceback
from conveyor_core.redis import REDIS_FAULT_ERRORS
from conveyor_core.snooze import Hold, Snooze, TooManySnoozesError
from conveyor_core.store import ArqJob, Claimed, Ended, JobStore, NextJobs
from conveyor_worker.policy import (
    Decision,
    Stop,
    TriesExhaustedError,
    decide,
    tries_left,
)
from conveyor_worker.telemetry import JobObservation, Outcome, Unobserved

logger = logging.getLogger(__name__)

# The metric outcome of each decision.
OUTCOMES = {
    JobState.COMPLETE: Outcome.SUCCESS,
    JobState.RETRYING: Outcome.RETRY,
    JobState.DEAD: Outcome.DEAD,
    JobState.CANCELLED: Outcome.CANCELLED,
    JobState.QUEUED: Outcome.INTERRUPTED,
}


@dataclass(slots=True)
class Try:
    """One claimed try, as the worker tracks it (its one map of running tries)."""

    claimed: Claimed
    fence: Fence
    task: "asyncio.Task[None] | None" = None
    # True while the handler runs: only then may the worker cancel the task.
    in_handler: bool = False
    # Set by the worker: a client's cancel, or its own shutdown.
    stop: Stop | None = None

    @property
    def job_id(self) -> str:
        return self.claimed.job_id


def describe(error: BaseException) -> JobError:
    """The error as the record keeps it: bounded, and masked by value (an
    address or a token in a message never reaches the record, logs or spans)."""
    trace = "".join(traceback.format_exception(error))
    return JobError(
        type=type(error).__name__,
        message=clean(str(error) or type(error).__name__),
        traceback=clean_traceback(trace),
    )


def not_run(type_: str, message: str) -> str:
    """The error of a job whose handler never ran, as JSON."""
    return JobError(type=type_, message=message).model_dump_json()


def _as_json(result: Any) -> str:
    try:
        return json.dumps(to_jsonable_python(result))
    except (TypeError, ValueError):
        return json.dumps(repr(result))


class Processor:
    """Everything a try of one worker's queue needs: its job types and their
    handlers, the store, the open resources, the worker's side of finish and fetch."""

    def __init__(
        self,
        queue: str,
        store: JobStore,
        catalog: Catalog,
        handlers: Mapping[str, AnyHandler],
        *,
        redact: Redactor | None = None,
        instrument: bool = True,
        cancelled_retention_ms: int = 86_400_000,
    ) -> None:
        self.queue = queue
        self.store = store
        self.catalog = catalog
        self.job_types = {t.name: t for t in catalog.for_queue(queue) if t.name in handlers}
        self.handlers = dict(handlers)
        self.redact = redact or Redactor()
        self.observation = JobObservation if instrument else Unobserved
        self.cancelled_retention_ms = cancelled_retention_ms
        # Set by the worker once its job modules' resources are open.
        self.resources: Mapping[str, Any] = {}
        self.next_jobs: NextJobs | None = None
        # Set by the worker: whether it is shutting down (a job's `ctx.stopping`).
        self.stopping: Callable[[], bool] = lambda: False

    async def process(self, try_: Try) -> JobState | None:
        """Run one try and record how it ended; returns the state it left the
        job in (None when the store refused or could not be reached)."""
        claimed = try_.claimed
        if claimed.job_bytes is None:
            return await self._settle(
                try_, "JobDataMissing", "the job's data expired or was removed before it ran"
            )
        job = ArqJob.decode(claimed.job_bytes)
        if job is None:
            return await self._settle(try_, "InvalidJobData", "job data is not valid JSON job data")
        job_type = self.job_types.get(job.function)
        if job_type is None:
            message = f"no job type {job.function!r} on queue {self.queue!r} in this worker"
            return await self._settle(try_, "UnknownJobType", message)
        if try_.stop is not None:  # stopped between its claim and its start
            return await self._end(try_, job_type, decide(job_type.retry, 0, stop=try_.stop))
        observed = self.observation(
            job_type,
            claimed.job_id,
            claimed.job_try,
            claimed.score_ms,
            job.meta,
            job.payload,
            self.redact,
        )
        with observed:
            decision, result, error = await self._run(try_, job_type, job)
            if decision.state is JobState.COMPLETE and job_type.offload_above_bytes is not None:
                decision, result, error = await self._offloaded(try_, job_type, result)
            observed.outcome = Outcome.SNOOZED if decision.snoozed else OUTCOMES[decision.state]
            if decision.state not in (JobState.CANCELLED, JobState.QUEUED) and not decision.snoozed:
                observed.error = error
            return await self._end(try_, job_type, decision, result, error)

    async def _run(
        self, try_: Try, job_type: JobType, job: ArqJob
    ) -> tuple[Decision, Any, BaseException | None]:
        """The handler under the job type's timeout, unless the job may not run;
        the policy's decision, the result and the error."""
        policy, job_try = job_type.retry, try_.claimed.job_try
        if not tries_left(policy, job_try):
            error: BaseException = TriesExhaustedError(
                f"no tries left after {policy.max_tries}; the last never finished"
            )
            return decide(policy, job_try, error), None, error
        try:  # an offloaded payload (claimcheck.py), read back and checked
            data = await claimcheck.resolve_payload(self.store.blobs, job.payload, try_.job_id)
        except Exception as exc:  # OffloadedBlobError is permanent; a store fault is not
            return decide(policy, job_try, exc), None, exc
        try:
            payload = job_type.payload.model_validate(data)
        except ValidationError as exc:
            return decide(policy, job_try, exc), None, exc
        ctx = JobContext(
            job_id=try_.job_id,
            job_try=job_try,
            job_type=job_type,
            store=self.store,
            catalog=self.catalog,
            meta=job.meta,
            resources=self.resources,
            fence=try_.fence,
            stop_requested=self.stopping,
        )
        try_.in_handler = True
        try:
            async with asyncio.timeout(job_type.timeout_s):
                result = await self.handlers[job_type.name](ctx, payload)
        except asyncio.CancelledError:
            # Only the worker cancels a try (a client's cancel, or a shutdown);
            # anything else that cancels it counts as a shutdown.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            return decide(policy, job_try, stop=try_.stop or Stop.SHUTDOWN), None, None
        except Interrupted:  # the handler hands the job back (checkpoint.py), as a shutdown
            return decide(policy, job_try, stop=try_.stop or Stop.SHUTDOWN), None, None
        except TimeoutError as exc:
            timeout = TimeoutError(f"timed out after {job_type.timeout_s:g} s")
            timeout.__cause__ = exc
            return decide(policy, job_try, timeout), None, timeout
        except Snooze as exc:
            return await self._snooze(try_, job_type, exc)
        except Exception as exc:
            return decide(policy, job_try, exc), None, exc
        finally:
            try_.in_handler = False
        if isinstance(result, Snooze):  # `return ctx.snooze(...)` works too
            return await self._snooze(try_, job_type, result)
        return decide(policy, job_try), result, None

    async def _snooze(
        self, try_: Try, job_type: JobType, snooze: Snooze
    ) -> tuple[Decision, Any, BaseException | None]:
        """A snooze, unless the job has snoozed as often as its type allows."""
        policy, job_try = job_type.retry, try_.claimed.job_try
        try:
            snoozes = await self.store.snoozes(try_.job_id)
        except REDIS_FAULT_ERRORS:
            snoozes = 0  # its end will not be recorded either: it runs again
        if snoozes < job_type.max_snoozes:
            return decide(policy, job_try, snooze), None, snooze
        error = TooManySnoozesError(
            f"snoozed {snoozes} times, as often as job type {job_type.name!r} allows "
            f"(max_snoozes); the last asked: {snooze}"
        )
        error.__cause__ = snooze
        return decide(policy, job_try, error), None, error

    async def _offloaded(
        self, try_: Try, job_type: JobType, result: Any
    ) -> tuple[Decision, Any, BaseException | None]:
        """A successful try's result as the record keeps it: itself, or the
        reference to its blob when it is over the type's offload_above_bytes
        (a blob store fault: the try fails, and is retried)."""
        result_json = _as_json(result)
        try:
            kept = await claimcheck.offload_result(
                self.store.blobs, job_type, try_.job_id, result_json, try_.fence.token
            )
        except Exception as exc:
            return decide(job_type.retry, try_.claimed.job_try, exc), None, exc
        return decide(job_type.retry, try_.claimed.job_try), json.loads(kept), None

    async def _end(
        self,
        try_: Try,
        job_type: JobType,
        decision: Decision,
        result: Any = None,
        error: BaseException | None = None,
    ) -> JobState | None:
        """The one end-of-try call to the store, with the try's token."""
        store, job_id, token = self.store, try_.job_id, try_.fence.token
        # The job's data as claimed: a final state makes it arq's result key unread.
        data = try_.claimed.job_bytes or b""
        # A stopping worker fetches nothing (see the worker's fetch()).
        next_jobs = self.next_jobs
        try:
            ended: Ended
            match decision.state:
                case JobState.COMPLETE:
                    ended = await store.complete(
                        job_type, job_id, _as_json(result), next_jobs, token=token, job_data=data
                    )
                # The delay counts from the try's end as the record keeps it:
                # one reading of the clock for both.
                case JobState.RETRYING if decision.snoozed:
                    end_ms, delay_ms = now_ms(), int(decision.delay_s * 1000)
                    hold = Hold(decision.hold, delay_ms) if decision.hold else None
                    ended = await store.snooze(
                        job_type,
                        job_id,
                        end_ms + delay_ms,
                        next_jobs,
                        token=token,
                        hold=hold,
                        at_ms=end_ms,
                    )
                case JobState.RETRYING:
                    end_ms = now_ms()
                    due_ms = end_ms + int(decision.delay_s * 1000)
                    error_json = describe(error or RuntimeError("retry")).model_dump_json()
                    ended = await store.retry_later(
                        job_type, job_id, due_ms, error_json, next_jobs, token=token, at_ms=end_ms
                    )
                case JobState.DEAD:
                    error_json = describe(error or RuntimeError("dead")).model_dump_json()
                    ended = await store.dead(
                        job_type, job_id, error_json, next_jobs, token=token, job_data=data
                    )
                case JobState.CANCELLED:
                    ended = await store.cancelled(job_type, job_id, token=token, job_data=data)
                case _:
                    ended = await store.put_back(job_type, job_id, token=token)
        except REDIS_FAULT_ERRORS as exc:
            logger.warning(
                "could not record the end of job %s (%s); it runs again once its lock lapses: %s",
                job_id,
                decision.state.value,
                exc,
            )
            return None
        if ended.stale:
            try_.fence.refused("end")
            return None
        return decision.state

    async def _settle(self, try_: Try, error_type: str, message: str) -> JobState | None:
        """A claimed job that cannot run here: dead with a clear error (or
        cancelled, if a cancel was pending); its handler never runs."""
        logger.warning("job %s cannot run: %s: %s", try_.job_id, error_type, message)
        try:
            state = await self.store.settle_unstarted(
                self.queue,
                try_.job_id,
                not_run(error_type, message),
                self.cancelled_retention_ms,
                token=try_.fence.token,
            )
        except REDIS_FAULT_ERRORS as exc:
            logger.warning("could not settle job %s, which never ran: %s", try_.job_id, exc)
            return None
        if state == "stale":
            try_.fence.refused("end")
            return None
        return JobState(state) if state else None
