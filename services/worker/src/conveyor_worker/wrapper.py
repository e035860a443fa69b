"""The one wrapper around every catalog function: the retry policy, and (through
telemetry.JobObservation) spans, logs and metrics. It decides; the store writes.

arq retries only on `Retry` and fails a job at once on any other error; here
the catalog's policy decides. arq's own `max_tries` is set one above the
policy's, so the wrapper always sees the last try and records the outcome.
The worker's claim has already started the job's record; each way a try can
end is one call to the store, which also does arq's bookkeeping for it and,
given the worker's `next_jobs` (arq's ctx), claims the slot's next job in the
same call (finish and fetch).
"""

import asyncio
import json
import logging
import traceback
from typing import Any, NoReturn

from arq.worker import Retry
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from conveyor_core.catalog import JobType
from conveyor_core.context import AnyHandler, JobContext
from conveyor_core.jobs import JobError, now_ms
from conveyor_core.redaction import Redactor
from conveyor_core.store import META_KWARG, JobStore, NextJobs
from conveyor_worker.telemetry import JobObservation, Outcome, Unobserved

logger = logging.getLogger(__name__)

TRACEBACK_LIMIT_CHARS = 4000


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
                meta=meta,
                resources=arq_ctx["resources"],
            )
            next_jobs: NextJobs | None = arq_ctx.get("next_jobs")
            result = await self._run(ctx, kwargs, observed, next_jobs)
            await store.complete(self.job_type, job_id, _as_json(result), next_jobs)
            observed.outcome = Outcome.SUCCESS
            return result

    async def _run(
        self,
        ctx: JobContext,
        kwargs: dict[str, Any],
        observed: JobObservation,
        next_jobs: NextJobs | None,
    ) -> Any:
        """The handler under the job type's timeout; failures become retries or
        dead letters. Each end of a try takes the slot's next job (`next_jobs`)."""
        if ctx.job_try > self.policy.max_tries:
            error = TriesExhaustedError(
                f"no tries left after {self.policy.max_tries}; the last never finished"
            )
            await self._give_up(ctx, error, observed, next_jobs)
        try:
            payload = self.job_type.payload.model_validate(kwargs)
        except ValidationError as exc:
            await self._give_up(ctx, exc, observed, next_jobs)
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
                await self._give_up(ctx, timeout, observed, next_jobs)
            await self._failed(ctx, timeout, observed, next_jobs)
        except Retry:
            observed.outcome = Outcome.RETRY
            raise  # a job may still ask arq for a retry itself
        except Exception as exc:
            await self._failed(ctx, exc, observed, next_jobs)

    async def _give_up(
        self,
        ctx: JobContext,
        error: BaseException,
        observed: JobObservation,
        next_jobs: NextJobs | None,
    ) -> NoReturn:
        """To the dead letters: a permanent error, or no tries left."""
        observed.outcome, observed.error = Outcome.DEAD, error
        error_json = describe(error).model_dump_json()
        await ctx.store.dead(self.job_type, ctx.job_id, error_json, next_jobs)
        raise error

    async def _failed(
        self,
        ctx: JobContext,
        error: BaseException,
        observed: JobObservation,
        next_jobs: NextJobs | None,
    ) -> NoReturn:
        """Retry with backoff, or give up: raises arq's Retry or the error itself.
        Either way arq's own finishing step (ConveyorWorker.finish_job) has
        nothing left to do: the store did it."""
        if self.policy.is_permanent(error) or ctx.job_try >= self.policy.max_tries:
            await self._give_up(ctx, error, observed, next_jobs)
        observed.outcome, observed.error = Outcome.RETRY, error
        delay_s = self.policy.backoff_s(ctx.job_try)
        due_ms = now_ms() + int(delay_s * 1000)
        await ctx.store.retry_later(
            self.job_type, ctx.job_id, due_ms, describe(error).model_dump_json(), next_jobs
        )
        raise Retry(defer=delay_s) from error

    async def _interrupted(self, store: JobStore, job_id: str) -> str:
        """Cancelled by a client, or cut short by a shutdown: then it runs again,
        here or on another worker, and this try does not count."""
        if await store.cancel_requested(job_id):
            await store.cancelled(self.job_type, job_id)
            return Outcome.CANCELLED
        await store.put_back(self.job_type, job_id)
        return Outcome.INTERRUPTED
