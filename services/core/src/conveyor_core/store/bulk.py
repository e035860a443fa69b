"""Bulk actions' batches: cancel, requeue or delete a few hundred jobs per call."""

from collections.abc import Sequence

from arq.constants import result_key_prefix

from conveyor_core.jobs import (
    now_ms,
)
from conveyor_core.store.declared import limited_keys, own_keys, queue_moves
from conveyor_core.store.reads import Reads
from conveyor_core.store.results import BulkBatch
from conveyor_core.store.wire import ArqJob

# A bulk action's Lua call acts on at most this many jobs.
BULK_BATCH_MAX = 500
BULK_ACTIONS = ("cancel", "requeue", "delete")


class Bulk(Reads):
    """One batch of a bulk action."""

    async def bulk_batch(
        self,
        action: str,
        queue: str,
        job_ids: Sequence[str],
        cancelled_retention_ms: int,
        idempotency_keys: Sequence[str] = (),
    ) -> BulkBatch:
        """Cancel, requeue or delete up to BULK_BATCH_MAX jobs of `queue` in one
        Lua call per shard they live on (lua/bulk.lua); jobs the action does
        not apply to are skipped.
        A delete also drops the given Idempotency-Keys (`keys.idempotency_key`)
        of the deleted jobs, so a resubmission makes a new job."""
        if action not in BULK_ACTIONS:
            raise ValueError(f"bulk action must be one of {BULK_ACTIONS}, not {action!r}")
        if len(job_ids) > BULK_BATCH_MAX:
            raise ValueError(
                f"a bulk batch takes at most {BULK_BATCH_MAX} jobs, not {len(job_ids)}"
            )
        if not job_ids:
            return BulkBatch(0, 0)
        # One call per shard of the queue the jobs live on (a call keeps to one slot).
        by_shard: dict[str, list[str]] = {}
        for job_id in job_ids:
            by_shard.setdefault(self.shard_of(job_id, queue), []).append(job_id)
        done, skipped = 0, 0
        limited = self.catalog.for_queue(queue)
        for shard, shard_ids in by_shard.items():
            targets: list[str | bytes] = list(shard_ids)
            if action == "requeue":
                targets = [x for pair in await self._job_data_of_results(shard_ids) for x in pair]
            declared = [key for job_id in shard_ids for key in own_keys(job_id)]
            shard_done, shard_skipped = await self._bulk(
                keys=[shard, *queue_moves(shard), *limited_keys(shard, limited), *declared],
                args=[action, now_ms(), cancelled_retention_ms, *targets],
            )
            done, skipped = done + int(shard_done), skipped + int(shard_skipped)
        if action == "delete" and idempotency_keys:
            await self.redis.delete(*idempotency_keys)
        return BulkBatch(done, skipped)

    async def _job_data_of_results(self, job_ids: Sequence[str]) -> Sequence[tuple[str, bytes]]:
        """Per job: the job data its arq result key holds (a finished job's
        payload and trace context, see lib/arq_result.lua), as arq's job key
        holds it, or b'' when it has no readable result key."""
        async with self.redis.pipeline(transaction=False) as pipe:  # the keys span slots
            for job_id in job_ids:
                pipe.get(result_key_prefix + job_id)
            results = await pipe.execute()
        out: list[tuple[str, bytes]] = []
        for job_id, raw in zip(job_ids, results, strict=True):
            job = ArqJob.decode(raw) if raw else None
            again = ArqJob(job.function, job.payload, job.meta, job.enqueued_at_ms) if job else None
            out.append((job_id, again.encode() if again else b""))
        return out
