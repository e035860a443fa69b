"""A try's lock lapsing at once, as it does when its worker dies or freezes."""

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from conveyor_core import keys
from conveyor_core.jobs import now_ms
from conveyor_core.scores import queue_score, split_score


async def lapse_lock(redis: ArqRedis, queue: str, job_id: str) -> None:
    """The lock goes and the job's queue entry is due again, as at the lock's
    end (the claim scores a running job's entry there: lib/claim.lua). The
    entry is in the shard of `queue` that the id names."""
    queue = keys.queue_of(job_id) or queue
    score = await redis.zscore(queue, job_id)
    assert score is not None, f"{job_id} is not in {queue}"
    priority, _ = split_score(score)
    await redis.delete(in_progress_key_prefix + job_id)
    await redis.zadd(queue, {job_id: queue_score(priority, now_ms())}, xx=True)
