"""The one wrapper around every catalog function: retries, dead letters, timeouts,
state, and (through telemetry.JobObservation) spans, logs and metrics.

arq retries only on `Retry` and fails a job at once on any other error; here
the catalog's policy decides. arq's own `max_tries` is set one above the
policy's, so the wrapper always sees the last try and records the outcome.
"""

import asyncio
import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

from arq.worker import Retry
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from conveyor_core.catalog import JobType
from conveyor_core.jobs import WAITING, JobError, JobState, now_ms
from conveyor_core.redaction import Redactor
from conveyor_core.store import DEAD_RETENTION_S, META_KWARG, JobStore
from conveyor_worker.context import AnyHandler, JobContext
from conveyor_worker.telemetry import JobObservation, Outcome, Unobserved

logger = logging.getLogger(__name__)

TRACEBACK_LIMIT_CHARS = 4000

IN_PROGRESS = JobState.IN_PROGRESS.value
FAILED = JobState.FAILED.value


# Key in arq's ctx: the worker's claims, by job id.
CLAIMS = "conveyor_claims"


@dataclass(frozen=True, slots=True)
class Claim:
    """What the worker's claim did to a job's record: the start transition's answer."""

    moved: bool
    old_state: str


class TriesExhaustedError(RuntimeError):
    """The previous try never reported back (its worker died) and none are left."""


def describe(error: BaseException) -> JobError:
    trace = "".join(traceback.format_exception(error))
    return JobError(
        type=type(error).__name__,
        message=str(error) or type(error).__name__,
        traceback=trace[-TRACEBACK_LIMIT_CHARS:],
    )


def _as_json(result: Any) -> str:
    try:
        return json.dumps(to_jsonable_python(result))
    except (TypeError, ValueError):
        return json.dumps(repr(result))


class JobRunner:
    """Runs one job type's handler under the catalog's policy and records each outcome."""

    def __init__(
        self,
        job_type: JobType,
        handler: AnyHandler,
        redact: Redactor | None = None,
        instrument: bool = True,
    ) -> None:
        self.job_type = job_type
        self.policy = job_type.retry
        self.handler = handler
        self.redact = redact or Redactor()
        self.observation = JobObservation if instrument else Unobserved

    async def run(self, arq_ctx: dict[str, Any], **kwargs: Any) -> Any:
        """The function arq calls: `ctx`, then the job's kwargs."""
        meta: dict[str, str] = kwargs.pop(META_KWARG, None) or {}
        store: JobStore = arq_ctx["store"]
        job_id, job_try = arq_ctx["job_id"], arq_ctx["job_try"]

        state = await self._start(arq_ctx, store, kwargs, meta)
        if state == JobState.CANCELLED.value:
            await self._cancelled(store, job_id)
            return None
        if state != IN_PROGRESS:
            logger.info("job %s is %s; not running it", job_id, state)
            return None

        observed = self.observation(
            self.job_type, job_id, job_try, arq_ctx["score"], meta, kwargs, self.redact
        )
        with observed:
            ctx = JobContext(
                job_id=job_id,
                job_try=job_try,
                job_type=self.job_type,
                store=store,
                catalog=arq_ctx["catalog"],
                http=arq_ctx["http"],
                meta=meta,
                workflow=arq_ctx.get("workflow"),
            )
            result = await self._run(ctx, kwargs, observed)
            at_ms = now_ms()
            await store.transition(
                job_id,
                JobState.COMPLETE.value,
                score_ms=at_ms,
                ttl_s=self.job_type.keep_result_s,
                finished_at_ms=at_ms,
                result=_as_json(result),
                error="",
                progress=100,
            )
            observed.outcome = Outcome.SUCCESS
            return result

    async def _run(self, ctx: JobContext, kwargs: dict[str, Any], observed: JobObservation) -> Any:
        """The handler under the job type's timeout; failures become retries or dead letters."""
        if ctx.job_try > self.policy.max_tries:
            error = TriesExhaustedError(
                f"no tries left after {self.policy.max_tries}; the last never finished"
            )
            await self._give_up(ctx, error, Outcome.DEAD, observed)
        try:
            payload = self.job_type.payload.model_validate(kwargs)
        except ValidationError as exc:
            await self._give_up(ctx, exc, Outcome.FAILED, observed)
        try:
            async with asyncio.timeout(self.job_type.timeout_s):
                return await self.handler(ctx, payload)
        except asyncio.CancelledError:
            observed.outcome = await asyncio.shield(self._interrupted(ctx.store, ctx.job_id))
            raise
        except TimeoutError as exc:
            timeout = TimeoutError(f"timed out after {self.job_type.timeout_s:g} s")
            timeout.__cause__ = exc
            if not self.policy.retry_timeouts:
                await self._give_up(ctx, timeout, Outcome.FAILED, observed)
            await self._failed(ctx, timeout, observed)
        except Retry:
            observed.outcome = Outcome.RETRY
            raise  # a job may still ask arq for a retry itself
        except Exception as exc:
            await self._failed(ctx, exc, observed)

    async def _start(
        self,
        arq_ctx: dict[str, Any],
        store: JobStore,
        kwargs: dict[str, Any],
        meta: dict[str, str],
    ) -> str:
        """Mark the job in progress; adopt a job a bare arq client enqueued.

        The worker's claim has usually marked it already; then only its answer is read.
        """
        job_id, at_ms = arq_ctx["job_id"], now_ms()
        fields = {"tries": arq_ctx["job_try"], "started_at_ms": at_ms, "next_try_at_ms": ""}
        allowed = (WAITING, FAILED, IN_PROGRESS)
        claim: Claim | None = arq_ctx.get(CLAIMS, {}).pop(job_id, None)
        if claim is not None:
            moved, old = claim.moved, claim.old_state
        else:
            moved, old = await store.transition(
                job_id, IN_PROGRESS, score_ms=at_ms, allowed=allowed, **fields
            )
        if not moved and old == "":
            await store.submit(
                self.job_type,
                job_id,
                kwargs,
                ready_at_ms=arq_ctx["score"],
                meta=meta,
                adopt=True,
                enqueued_at_ms=int(arq_ctx["enqueue_time"].timestamp() * 1000),
            )
            moved, old = await store.transition(
                job_id, IN_PROGRESS, score_ms=at_ms, allowed=allowed, **fields
            )
        if not moved:
            return old  # cancelled (or finished) meanwhile: do not run it
        if old == IN_PROGRESS and await store.cancel_requested(job_id):
            return JobState.CANCELLED.value  # its worker died while a cancel was pending
        return IN_PROGRESS

    async def _give_up(
        self, ctx: JobContext, error: BaseException, outcome: str, observed: JobObservation
    ) -> NoReturn:
        """To the dead letters: `failed` for a permanent error, `dead` for no tries left."""
        observed.outcome, observed.error = outcome, error
        at_ms = now_ms()
        await ctx.store.transition(
            ctx.job_id,
            JobState.DEAD.value,
            score_ms=at_ms,
            ttl_s=DEAD_RETENTION_S,
            finished_at_ms=at_ms,
            next_try_at_ms="",
            error=describe(error).model_dump_json(),
        )
        raise error

    async def _failed(
        self, ctx: JobContext, error: BaseException, observed: JobObservation
    ) -> NoReturn:
        """Retry with backoff, or give up: raises arq's Retry or the error itself."""
        if self.policy.is_permanent(error):
            await self._give_up(ctx, error, Outcome.FAILED, observed)
        if ctx.job_try >= self.policy.max_tries:
            await self._give_up(ctx, error, Outcome.DEAD, observed)
        observed.outcome, observed.error = Outcome.RETRY, error
        delay_s = self.policy.backoff_s(ctx.job_try)
        next_try_ms = now_ms() + int(delay_s * 1000)
        await ctx.store.transition(
            ctx.job_id,
            FAILED,
            score_ms=next_try_ms,
            next_try_at_ms=next_try_ms,
            error=describe(error).model_dump_json(),
        )
        raise Retry(defer=delay_s) from error

    async def _cancelled(self, store: JobStore, job_id: str) -> None:
        at_ms = now_ms()
        await store.transition(
            job_id,
            JobState.CANCELLED.value,
            score_ms=at_ms,
            ttl_s=self.job_type.keep_result_s,
            finished_at_ms=at_ms,
        )

    async def _interrupted(self, store: JobStore, job_id: str) -> str:
        """Cancelled by a client (arq's abort), or cut short by a shutdown."""
        if await store.cancel_requested(job_id):
            await self._cancelled(store, job_id)
            return Outcome.CANCELLED
        # arq puts it back in the queue; it runs again, here or on another worker.
        at_ms = now_ms()
        await store.transition(job_id, WAITING, score_ms=at_ms, ready_at_ms=at_ms)
        return Outcome.REQUEUED
