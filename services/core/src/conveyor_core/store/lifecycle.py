"""Every change of a job's state: submit, claim, the end of a try, progress,
lock renewal, cancel and requeue; each one Lua script built on the one
transition (lua/lib/transition.lua)."""

import contextlib
import math
from collections.abc import Sequence
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from redis.exceptions import OutOfMemoryError

from conveyor_core import keys
from conveyor_core.catalog import JobType
from conveyor_core.checkpoint import Checkpoint
from conveyor_core.debounce import Debounce
from conveyor_core.flow import flow_entry
from conveyor_core.history import history_key
from conveyor_core.jobs import (
    DEAD_RETENTION_S,
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    TERMINAL_STATES,
    JobPublic,
    JobState,
    now_ms,
)
from conveyor_core.keys import ARQ_EXPIRY_EXTRA_MS
from conveyor_core.metrics import REDIS_WAIT_SHORT
from conveyor_core.ratelimit import RateLimit
from conveyor_core.replicas import ReplicasShortError, call_and_wait
from conveyor_core.scores import PRIORITIES, queue_score
from conveyor_core.snooze import Hold
from conveyor_core.store.declared import (
    INDEX_AFTER,
    fairness_keys,
    flow_keys,
    group_keys,
    limited_keys,
    own_keys,
    queue_moves,
)
from conveyor_core.store.fields import _flatten, _pairs
from conveyor_core.store.reads import Reads
from conveyor_core.store.results import (
    Claim,
    Ended,
    NextJobs,
    Quota,
    Reported,
    Submitted,
    _parse_claim,
    claim_nonce,
)
from conveyor_core.store.wire import SUBMITTED_BY, ArqJob

# A submit over its key's quota checks at most this many of the key's
# outstanding jobs for ones that ended (lua/submit.lua).
QUOTA_PRUNE_PER_CALL = 16
# finish.lua's end of a try that does not count and leaves the job retrying.
SNOOZED = "snoozed"


class Lifecycle(Reads):
    """What writes a job's state."""

    async def admit(self) -> None:
        """Raise unless a job may be acknowledged now (the `admit` given, if any).
        Every submit asks; a route that writes other data first asks before that."""
        if self._admit is not None:
            await self._admit()

    async def submit(
        self,
        job_type: JobType,
        job_id: str,
        payload: dict[str, Any],
        *,
        ready_at_ms: int,
        meta: dict[str, str],
        idempotency_key: str | None = None,
        fingerprint: str = "",
        rate_limit: RateLimit | None = None,
        priority: int | None = None,
        id_may_repeat: bool = False,
        quota: Quota | None = None,
        debounce: Debounce | None = None,
        stored_payload: dict[str, Any] | None = None,
    ) -> Submitted:
        """Enqueue the job as arq would, unless its Idempotency-Key names one
        already, or the caller's `rate_limit` or `quota` refuses it (in the
        same step). An Idempotency-Key is the submitting api key's own
        (`meta["submitted_by"]`).

        An id the caller chose (`id_may_repeat`: a scheduled run's, one per
        tick) is refused while its job lives, also once it finished (when its
        job key became arq's result key); a fresh random id needs no check.
        A `debounce` key's window may keep an earlier job instead (debounce.py).

        Its score is its due time in its priority's band (the job type's
        priority unless `priority` is given). The store's `admit` may refuse it first.
        `stored_payload` is what the job keeps in place of `payload` (an
        offloaded one's reference, see claimcheck.py); flow limits read `payload`."""
        await self.admit()
        at_ms = now_ms()
        if debounce is not None and debounce.delay:  # a trailing debounce: due after its window
            ready_at_ms = max(ready_at_ms, at_ms + debounce.window_ms)
        priority = job_type.priority if priority is None else priority
        if priority not in PRIORITIES:
            raise ValueError(
                f"priority must be {HIGHEST_PRIORITY} (highest) to {LOWEST_PRIORITY} (lowest), "
                f"not {priority!r}"
            )
        if idempotency_key:
            meta = {**meta, "idempotency_key": idempotency_key}
        kept = payload if stored_payload is None else stored_payload
        job = ArqJob(job_type.name, kept, meta, at_ms)
        queue = self.shard_of(job_id, job_type.queue)
        absent = keys.absent(queue)
        idem_key = (
            keys.idempotency_key(queue, job_type.name, idempotency_key, meta.get(SUBMITTED_BY))
            if idempotency_key
            else absent
        )
        limiter, refused_s = await self._limiter(rate_limit, absent)
        if refused_s is not None:
            return Submitted(job_id, False, retry_after_s=refused_s)
        expiry_ms = max(ready_at_ms - at_ms, 0) + ARQ_EXPIRY_EXTRA_MS  # a past run_at: due now
        flow = flow_entry(job_type.name, job_type.limits, payload)
        quota_full = quota is not None and not await self._take_place(
            quota, job_id, at_ms, expiry_ms
        )
        submitted = await call_and_wait(
            self.redis,
            self._submit,
            replicas=self.wait_replicas,
            timeout_ms=self.wait_timeout_ms,
            keys=[
                job_key_prefix + job_id,
                result_key_prefix + job_id if id_may_repeat else absent,
                queue,
                idem_key,
                keys.queue_key(queue, keys.FLOW_SUFFIX),
                keys.debounce_key(queue, job_type.name, debounce.key, meta.get(SUBMITTED_BY))
                if debounce
                else absent,
                limiter,
                history_key(queue, at_ms // 60_000),
                *fairness_keys(queue, flow),
            ],
            args=[
                job_id,
                job.encode(),
                queue_score(priority, ready_at_ms),
                expiry_ms,
                f"{job_id} {fingerprint}",
                math.ceil(job_type.keep_result_s),
                keys.wake_channel(queue),
                flow,
                job_type.name,
                at_ms,
                "1" if quota_full else "0",
                debounce.script_mode if debounce else "",
                debounce.window_ms if debounce else 0,
                rate_limit.interval_us if rate_limit else 0,
                rate_limit.burst if rate_limit else 0,
            ],
        )
        status, *existing = submitted.reply
        if quota is not None and not quota_full and status != b"created":
            await self._quota(keys=[quota.key], args=["give", at_ms, job_id])
        if status == b"created" and meta.get("parent_id"):
            await self._link(
                keys=[keys.job_key(meta["parent_id"])], args=[f"child:{job_id}", job_type.name]
            )
        wrote = status == b"created" or (status == b"debounced" and existing[1] == b"1")
        if submitted.short and wrote:
            # Written, but on fewer replicas than asked: said so, never acknowledged.
            REDIS_WAIT_SHORT.labels(job_type.queue).inc()
            raise ReplicasShortError(job_id, submitted.wanted, submitted.acknowledged)
        if status == b"debounced":
            kept_id, replaced = existing
            return Submitted(kept_id.decode(), False, debounced=True, replaced=replaced == b"1")
        if status == b"limited":
            return Submitted(job_id, False, retry_after_s=int(existing[0]) / 1_000_000)
        if status == b"over_quota":
            return Submitted(job_id, False, over_quota=True)
        if status == b"exists":
            existing_id, _, existing_fingerprint = existing[0].decode().partition(" ")
            return Submitted(existing_id, False, existing_fingerprint == fingerprint)
        if status == b"duplicate":
            return Submitted(job_id, False)
        record = JobPublic.from_parts(
            job_id,
            job,
            {},
            score_ms=ready_at_ms,
            queue=job_type.queue,
            max_tries=job_type.retry.max_tries,
            at_ms=at_ms,
            priority=priority,
        )
        return Submitted(job_id, True, job=record)

    async def _take_place(self, quota: Quota, job_id: str, at_ms: int, ttl_ms: int) -> bool:
        """Take a place for `job_id` in the caller's quota of outstanding jobs
        (lua/quota.lua); False when it is full. A full one's least recently
        checked jobs are read (each in its own slot, one pipeline) and the
        ended ones dropped, a bounded number per submit, before one more try."""
        for pruned in (False, True):
            reply = await self._quota(
                keys=[quota.key],
                args=["take", at_ms, job_id, quota.max_jobs, QUOTA_PRUNE_PER_CALL, ttl_ms],
            )
            if reply[0] == 1:
                return True
            if pruned:
                return False
            checked = [member.decode() for member in reply[1:]]
            async with self.redis.pipeline(transaction=False) as pipe:
                for other in checked:
                    pipe.hget(keys.job_key(other), "state")
                    pipe.exists(job_key_prefix + other)
                found = await pipe.execute()
            verdicts: list[str] = []
            for i, other in enumerate(checked):
                state, waiting = found[2 * i], found[2 * i + 1]
                ended = state.decode() in TERMINAL_STATES if state else not waiting
                verdicts += [other, "1" if ended else "0"]
            await self._quota(keys=[quota.key], args=["prune", at_ms, *verdicts])
        return False

    async def claim(
        self,
        queue: str,
        wanted: int,
        *,
        lock_ttl_ms: int,
        cancelled_retention_ms: int,
        scan_limit: int,
    ) -> Claim:
        """Lock and start up to `wanted` due jobs; also say when the next one falls due."""
        reply = await self._claim(
            keys=[
                queue,
                keys.paused_key(queue),
                keys.queue_key(queue, keys.FLOW_SUFFIX),
                keys.queue_key(queue, keys.HELD_SUFFIX),
                *self.claim_keys_of(queue),
            ],
            args=[
                now_ms(),
                lock_ttl_ms,
                wanted,
                scan_limit,
                cancelled_retention_ms,
                self._claim_limits.get(queue, ""),
                claim_nonce(),
            ],
        )
        return _parse_claim(reply, queue)

    async def _end_try(
        self,
        job_type: JobType,
        job_id: str,
        state: JobState | str,
        score: float,
        next_jobs: NextJobs | None = None,
        token: str = "",
        hold: str = "",
        job_data: bytes = b"",
        at_ms: int | None = None,
        **fields: Any,
    ) -> Ended:
        """One end of a try, at `at_ms` (default: now). With the try's `token`
        (the worker always gives it), a stale try's end is refused whole:
        `Ended.stale`, nothing moved or claimed. `job_data` is the job's data as
        the claim returned it: a final state makes it arq's result key without
        reading it again (b"": read it)."""
        fetch = next_jobs.fetch() if next_jobs is not None else None
        shard = self.shard_of(job_id, job_type.queue)
        to = state.value if isinstance(state, JobState) else state
        end_ms = now_ms() if at_ms is None else at_ms
        args: list[Any] = [job_id, to, end_ms, math.ceil(score), job_type.name, token]
        fields_ = _flatten(fields)
        # KEYS[1] is what finish.lua reads; the rest declare what it touches.
        declared = [
            shard,
            *own_keys(job_id),
            keys.queue_key(shard, keys.FLOW_SUFFIX),
            keys.queue_key(shard, keys.HELD_SUFFIX),
            keys.index_key(shard, JobState.IN_PROGRESS.value),
            *([keys.index_key(shard, INDEX_AFTER[to])] if to in INDEX_AFTER else []),
            history_key(shard, end_ms // 60_000),
            *flow_keys(shard, job_type),
        ]
        reply: list[Any] | None = None
        if fetch is not None:
            limits = self._claim_limits.get(shard, "")
            fetch_args: list[Any] = [fetch.wanted, fetch.lock_ttl_ms, fetch.scan_limit]
            fetch_args += [fetch.cancelled_retention_ms, limits, claim_nonce()]
            with contextlib.suppress(OutOfMemoryError):
                # The claim's keys too, each once (the end's declares a few).
                claiming = [keys.paused_key(shard), *self.claim_keys_of(shard)]
                reply = await self._finish_and_fetch(
                    keys=list(dict.fromkeys([*declared, *claiming])),
                    args=[*args, *fetch_args, hold, job_data, *fields_],
                )
        if reply is None:
            reply = await self._finish(
                keys=declared,
                args=[*args, 0, 0, 0, 0, "", "", hold, job_data, *fields_],
            )
        moved, state_now, *claim = reply
        stale = not moved and state_now == b"stale"
        ended = Ended(bool(moved), _parse_claim(claim, shard) if claim else None, stale)
        if next_jobs is not None and ended.claim is not None:
            next_jobs.take(ended.claim)
        return ended

    async def complete(
        self,
        job_type: JobType,
        job_id: str,
        result_json: str,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
        job_data: bytes = b"",
    ) -> Ended:
        at_ms = now_ms()
        retention_ms = job_type.keep_result_s * 1000
        return await self._end_try(
            job_type,
            job_id,
            JobState.COMPLETE,
            retention_ms,
            next_jobs,
            token,
            job_data=job_data,
            finished_at_ms=at_ms,
            result=result_json,
            error="",
            progress=100,
        )

    async def retry_later(
        self,
        job_type: JobType,
        job_id: str,
        due_ms: int,
        error_json: str,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
        at_ms: int | None = None,
    ) -> Ended:
        """Retrying, due again at `due_ms`; the try ended at `at_ms` (default:
        now), the time its delay counts from, so the record's next try is that
        delay after the try's end."""
        return await self._end_try(
            job_type,
            job_id,
            JobState.RETRYING,
            due_ms,
            next_jobs,
            token,
            at_ms=at_ms,
            next_try_at_ms=due_ms,
            error=error_json,
        )

    async def snooze(
        self,
        job_type: JobType,
        job_id: str,
        due_ms: int,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
        hold: Hold | None = None,
        at_ms: int | None = None,
    ) -> Ended:
        """The handler asked to run again at `due_ms` (or met a partner's limit):
        retrying, the try not counted, kept in the record as a snooze (ended at
        `at_ms`, default now); with a `hold`, the job's type or key starts
        nothing for that long."""
        return await self._end_try(
            job_type,
            job_id,
            SNOOZED,
            due_ms,
            next_jobs,
            token,
            hold.encode() if hold is not None else "",
            at_ms=at_ms,
            next_try_at_ms=due_ms,
        )

    async def snoozes(self, job_id: str) -> int:
        """How often the job snoozed since its last requeue."""
        found = await self.redis.hget(keys.job_key(job_id), "snoozes")  # type: ignore[misc]
        return int(found) if found else 0

    async def dead(
        self,
        job_type: JobType,
        job_id: str,
        error_json: str,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
        job_data: bytes = b"",
    ) -> Ended:
        return await self._end_try(
            job_type,
            job_id,
            JobState.DEAD,
            DEAD_RETENTION_S * 1000,
            next_jobs,
            token,
            job_data=job_data,
            finished_at_ms=now_ms(),
            next_try_at_ms="",
            error=error_json,
        )

    async def cancelled(
        self, job_type: JobType, job_id: str, *, token: str = "", job_data: bytes = b""
    ) -> Ended:
        """A running job's cancel took effect."""
        return await self._end_try(
            job_type,
            job_id,
            JobState.CANCELLED,
            job_type.keep_result_s * 1000,
            token=token,
            job_data=job_data,
            finished_at_ms=now_ms(),
        )

    async def put_back(self, job_type: JobType, job_id: str, *, token: str = "") -> Ended:
        """A shutdown cut the try short: due again now, and the try does not count."""
        at_ms = now_ms()
        return await self._end_try(
            job_type, job_id, JobState.QUEUED, at_ms, token=token, ready_at_ms=at_ms
        )

    async def settle_unstarted(
        self,
        queue: str,
        job_id: str,
        error_json: str,
        cancelled_retention_ms: int,
        *,
        token: str = "",
    ) -> str:
        """A claimed job that cannot run (its data gone or not valid, its type
        unknown here): cancelled if a cancel was pending, else dead; '' if not in
        progress, 'stale' if the try's token is no longer the record's."""
        shard = self.shard_of(job_id, keys.queue_of_shard(queue))
        state = await self._settle(
            keys=[
                shard,
                *own_keys(job_id),
                *queue_moves(shard),
                *limited_keys(shard, self.catalog.for_queue(keys.queue_of_shard(shard))),
            ],
            args=[
                job_id,
                now_ms(),
                DEAD_RETENTION_S * 1000,
                cancelled_retention_ms,
                error_json,
                token,
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def report_progress(
        self, job_id: str, percent: int, message: str, *, token: str = ""
    ) -> Reported:
        """Record a running job's progress; with the try's `token`, a stale try's
        report is refused."""
        done = await self._progress(
            keys=[keys.job_key(job_id)],
            args=[percent, message, keys.events_channel(job_id), token],
        )
        return Reported(int(done))

    async def save_checkpoint(
        self, job_id: str, checkpoint: Checkpoint, *, token: str = ""
    ) -> Reported:
        """Keep a running job's checkpoint in its record, and the progress derived
        from it (with done and total); with the try's `token`, a stale try's is
        refused."""
        percent = checkpoint.percent
        saved = await self._checkpoint(
            keys=[keys.job_key(job_id)],
            args=[
                checkpoint.encode(),
                keys.events_channel(job_id),
                token,
                "" if percent is None else percent,
            ],
        )
        return Reported(int(saved))

    async def renew_locks(
        self, tries: Sequence[tuple[str, str]], lock_ttl_ms: int, queue: str | None = None
    ) -> list[str]:
        """Renew the locks of running tries, (job id, token) each, in one call;
        returns the ids of the stale ones (their token is no longer the record's),
        whose locks were left alone. With the tries' `queue` (a worker's), each
        renewed job's queue entry moves to its lock's new end (renew.lua) in
        the shard its id names (shard 0 for an id with no tag)."""
        if not tries:
            return []
        # One call per queue shard: a call's keys share a slot on a cluster, and
        # each shard's entries move in its own queue key.
        by_shard: dict[str | None, list[tuple[str, str]]] = {}
        for job_id, token in tries:
            by_shard.setdefault(keys.queue_of(job_id), []).append((job_id, token))
        stale: list[str] = []
        for shard, shard_tries in by_shard.items():
            # An id with no tag has no slot of the queue's on a cluster: no entry moves.
            untagged = shard is None and self.one_slot_per_call
            rescore = None if queue is None or untagged else (shard or queue)
            replies = await self._renew(
                keys=[
                    *(
                        key
                        for job_id, _ in shard_tries
                        for key in (keys.job_key(job_id), in_progress_key_prefix + job_id)
                    ),
                    *([rescore] if rescore else []),
                ],
                args=[
                    lock_ttl_ms,
                    now_ms() if rescore else "",
                    *(part for pair in shard_tries for part in pair),
                ],
            )
            stale += [job_id.decode() for job_id in replies]
        return stale

    async def cancel(self, job_id: str) -> tuple[str, JobPublic | None]:
        """'missing', the final state it was in, 'cancelling', 'cancel_requested' (asked
        before) or 'cancelled_now', and the record."""
        found = await self._read(job_id)
        if found is None:
            return "missing", None
        arq_job, job = found
        job_type = self.catalog.get(job.job_type)
        retention_s = job_type.keep_result_s if job_type else DEAD_RETENTION_S
        shard = self.shard_of(job_id, job.queue)
        declared = [*own_keys(job_id), *queue_moves(shard)]
        if job_type is not None:
            declared += flow_keys(shard, job_type)
        outcome, flat = await self._cancel(
            keys=[shard, *declared], args=[job_id, now_ms(), math.ceil(retention_s * 1000)]
        )
        if not flat:
            return "missing", None
        return outcome.decode(), self._public(job_id, arq_job, _pairs(flat), shard, None)

    async def requeue(
        self, job_id: str, meta: dict[str, str], *, start_over: bool = False
    ) -> tuple[str, JobPublic | None]:
        """'requeued' and the record as requeued, or 'missing' or the state it was in.
        The job resumes from its last checkpoint, unless it is to `start_over`."""
        found = await self._read(job_id)
        if found is None:
            return "missing", None
        arq_job, job = found
        if job.state is not JobState.DEAD:
            return job.state.value, job
        if arq_job is None or arq_job.function not in self.catalog:
            return "unknown_type", job
        at_ms = now_ms()
        if submitted_by := arq_job.meta.get(SUBMITTED_BY):  # still the same key's job
            meta = {**meta, SUBMITTED_BY: submitted_by}
        again = ArqJob(arq_job.function, arq_job.payload, meta, at_ms)
        shard = self.shard_of(job_id, job.queue)
        outcome, flat = await self._requeue(
            keys=[
                shard,
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                keys.job_key(job_id),
                in_progress_key_prefix + job_id,
                *group_keys(job_id),
                *queue_moves(shard),
                *flow_keys(shard, self.catalog[arq_job.function]),
            ],
            args=[job_id, at_ms, again.encode(), "1" if start_over else ""],
        )
        if not flat:
            return "missing", None
        return outcome.decode(), self._public(job_id, again, _pairs(flat), shard, None)
