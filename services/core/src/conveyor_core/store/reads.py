"""Reading jobs: one, many, and why a due one is held."""

from collections.abc import Iterable, Iterator
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix
from redis.asyncio.client import Pipeline

from conveyor_core import keys
from conveyor_core.checkpoint import Checkpoint
from conveyor_core.flow import fairness_key
from conveyor_core.jobs import (
    DEFAULT_PRIORITY,
    HoldReason,
    JobPublic,
    JobState,
    now_ms,
)
from conveyor_core.ratelimit import RateLimit
from conveyor_core.scores import split_score
from conveyor_core.store.base import StoreBase
from conveyor_core.store.fields import _decode, _pairs
from conveyor_core.store.results import Read
from conveyor_core.store.wire import ArqJob, _with_outcome


class Reads(StoreBase):
    """What reads a job's state."""

    async def get(self, job_id: str) -> JobPublic | None:
        found = await self._read(job_id)
        return found[1] if found else None

    async def get_many(self, job_ids: list[str]) -> list[JobPublic | None]:
        """Several jobs in one round trip (a pipeline, not a transaction), in order."""
        found = await self._read_many([(job_id, None) for job_id in job_ids])
        return [f[1] if f else None for f in found]

    async def read(self, job_id: str, rate_limit: RateLimit | None = None) -> Read:
        """One job, after spending one request of the caller's `rate_limit` (when
        given) in the same script: one round trip (a second only for a due job
        of a limited type, see `held_reasons`). On a cluster the limiter, in a
        slot of its own, is spent by a call of its own first."""
        named = keys.queue_of(job_id)
        queues = [named] if named is not None else self.catalog.queues()
        if named is None and self.one_slot_per_call:
            # An id with no tag (a bare arq client's): its keys and the queues
            # span slots, so they are read by a pipeline, split per node.
            _, refused_s = await self._limiter(rate_limit, "")
            if refused_s is not None:
                return Read(retry_after_s=refused_s)
            (found,) = await self._read_many([(job_id, None)])
            return Read(found=found)
        limiter, refused_s = await self._limiter(
            rate_limit, keys.absent(queues[0]) if queues else ""
        )
        if refused_s is not None:
            return Read(retry_after_s=refused_s)
        reply = await self._read_one(
            keys=[
                limiter,
                keys.job_key(job_id),
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                *(key for queue in queues for key in (queue, keys.paused_key(queue))),
            ],
            args=[
                job_id,
                rate_limit.interval_us if rate_limit else 0,
                rate_limit.burst if rate_limit else 0,
            ],
        )
        if not reply[0]:
            return Read(retry_after_s=int(reply[1]) / 1_000_000)
        _, flat, job_bytes, where, score, paused = reply
        scores = {where.decode(): score} if score is not None else {}
        found = self._found(job_id, _pairs(flat), job_bytes, scores, paused == 1, now_ms())
        (found,) = await self.held_reasons([found])
        return Read(found=found)

    async def _read(self, job_id: str) -> tuple[ArqJob | None, JobPublic] | None:
        return (await self.read(job_id)).found

    async def _read_many(
        self, rows: Iterable[tuple[str, str | None]], at_ms: int | None = None
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Jobs by (id, queue) in one round trip (see `_add_reads`), and a second
        only for due jobs of limited types (see `held_reasons`)."""
        rows = list(rows)
        async with self.redis.pipeline(transaction=False) as pipe:
            self._add_reads(pipe, rows)
            replies = iter(await pipe.execute())
        return await self.held_reasons(self._parse_reads(rows, replies, at_ms))

    def _add_reads(self, pipe: Pipeline, rows: list[tuple[str, str | None]]) -> None:
        """Queue on `pipe` what reading jobs by (id, queue) takes: whether each
        queue is paused, and per job its hash, arq's job key, arq's result key
        (a finished job's payload and result) and its score in its queue (in
        every queue of the catalog when not known). `_parse_reads` makes the
        jobs of the replies."""
        queues = self.catalog.queues()
        for name in self.catalog.all_shards():
            pipe.exists(keys.paused_key(name))
        for job_id, queue in rows:
            pipe.hgetall(keys.job_key(job_id))
            pipe.get(job_key_prefix + job_id)
            pipe.get(result_key_prefix + job_id)
            for q in _candidates(job_id, queue, queues):
                pipe.zscore(q, job_id)

    def _parse_reads(
        self,
        rows: list[tuple[str, str | None]],
        replies: Iterator[Any],
        at_ms: int | None = None,
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Take the jobs' replies (as `_add_reads` queued them) from `replies`."""
        queues = self.catalog.queues()
        paused = {name for name in self.catalog.all_shards() if next(replies)}
        at_ms = at_ms or now_ms()
        out: list[tuple[ArqJob | None, JobPublic] | None] = []
        for job_id, queue in rows:
            raw, job_bytes, result_bytes = next(replies), next(replies), next(replies)
            candidates = _candidates(job_id, queue, queues)
            scores = {q: s for q in candidates if (s := next(replies)) is not None}
            record = _decode(raw)
            where = record.get("queue") or next(iter(scores), "")
            out.append(
                self._found(
                    job_id, record, job_bytes or result_bytes, scores, where in paused, at_ms
                )
            )
        return out

    def _found(
        self,
        job_id: str,
        record: dict[str, str],
        job_bytes: bytes | None,
        scores: dict[str, Any],
        paused: bool,
        at_ms: int,
    ) -> tuple[ArqJob | None, JobPublic] | None:
        """A job from its record, arq's job key (or, finished, its result key)
        and (waiting, with no record yet) its score in the queue it waits in;
        None when there is neither."""
        if not record and not scores:
            # Never ours (a bare arq worker finished it), or gone.
            return None
        arq_job = ArqJob.decode(job_bytes) if job_bytes else None
        record = _with_outcome(record, arq_job, job_bytes)
        where = record.get("queue") or next(iter(scores), "")
        priority, score_ms = (
            (DEFAULT_PRIORITY, None) if record else split_score(float(scores[where]))
        )
        reason = HoldReason.PAUSED if paused else None
        job = self._public(job_id, arq_job, record, where, score_ms, at_ms, reason, priority)
        return arq_job, job

    async def held_reasons(
        self, found: list[tuple[ArqJob | None, JobPublic] | None]
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Due jobs of limited types (queued, or retrying and due): why the claim
        last passed over their type or key (limit, rate), from the queue's
        waiting hash; one round trip."""
        asked = []
        for i, item in enumerate(found):
            if item is None:
                continue
            arq_job, job = item
            due = job.state is JobState.QUEUED or (
                job.state is JobState.RETRYING
                and job.next_try_at is not None
                and job.next_try_at.timestamp() * 1000 <= now_ms()
            )
            if arq_job is None or not due:
                continue
            job_type = self.catalog.get(job.job_type)
            if job_type and job_type.limits and job.waiting_reason is None:
                key = fairness_key(job_type.limits, arq_job.payload)
                fields = [job_type.name, *([f"{job_type.name}\n{key}"] if key else [])]
                shard = self.shard_of(job.id, job.queue)
                asked.append((i, keys.queue_key(shard, keys.HELD_SUFFIX), fields))
        if not asked:
            return found
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, waiting, fields in asked:
                pipe.hmget(waiting, fields)
            replies = await pipe.execute()
        out = list(found)
        for (i, _, _), reasons in zip(asked, replies, strict=True):
            reason = next((r.decode() for r in reasons if r), None)
            item = out[i]
            if reason and item is not None:
                update = {"waiting_reason": HoldReason(reason)}
                out[i] = (item[0], item[1].model_copy(update=update))
        return out

    def _public(
        self,
        job_id: str,
        arq_job: ArqJob | None,
        record: dict[str, str],
        queue: str,
        score_ms: int | None,
        at_ms: int | None = None,
        waiting_reason: HoldReason | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> JobPublic:
        job_type = self.catalog.get(arq_job.function) if arq_job else None
        return JobPublic.from_parts(
            job_id,
            arq_job,
            record,
            score_ms=score_ms,
            queue=keys.queue_of_shard(queue),  # a job is its queue's, whichever shard
            max_tries=job_type.retry.max_tries if job_type else 1,
            at_ms=at_ms,
            waiting_reason=waiting_reason,
            priority=priority,
        )

    async def cancel_requested(self, job_id: str) -> bool:
        flag = await self.redis.hget(keys.job_key(job_id), "cancel_requested")  # type: ignore[misc]
        return bool(flag == b"1")

    async def last_checkpoint(self, job_id: str) -> Checkpoint | None:
        """The job's last checkpoint (one read), or None."""
        raw = await self.redis.hget(keys.job_key(job_id), "checkpoint")  # type: ignore[misc]
        return Checkpoint.decode(raw)


def _candidates(job_id: str, queue: str | None, queues: list[str]) -> list[str]:
    """Where a job may wait: its queue when known or named by its id
    (keys.job_id_for), else every queue of the catalog (a bare arq id)."""
    known = queue or keys.queue_of(job_id)
    return [known] if known else queues
