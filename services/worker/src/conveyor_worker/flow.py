"""What the worker's claim saw of flow control, exported as metrics.

Every replica exports the same queue state from its own claims; the alert
rules keep the largest per queue. A worker claims at least once per idle poll,
so the figures are at most that old.
"""

from conveyor_core.jobs import HoldReason, now_ms
from conveyor_core.metrics import JOBS_HELD, QUEUE_PAUSED, QUEUE_PAUSED_SECONDS
from conveyor_core.store import Claim


class ClaimMetrics:
    """The flow-control gauges of one worker's queue, set from each claim. Set
    only when a value changes: the claim runs several times per job at full
    speed, and most claims change nothing. On a queue of several shards each
    shard's last claim counts: held jobs are summed, and the queue is paused
    since the earliest pause of a shard."""

    def __init__(self, queue: str) -> None:
        self.paused = QUEUE_PAUSED.labels(queue)
        self.paused_s = QUEUE_PAUSED_SECONDS.labels(queue)
        self.held = {reason: JOBS_HELD.labels(queue, reason.value) for reason in HoldReason}
        self._by_shard: dict[str, tuple[int | None, tuple[int, ...]]] = {}
        self._last: tuple[int | None, tuple[int, ...]] | None = None

    def record(self, claim: Claim) -> None:
        held = tuple(int(claim.held.get(reason, 0)) for reason in self.held)
        self._by_shard[claim.shard] = (claim.paused_at_ms, held)
        pauses = [at for at, _ in self._by_shard.values() if at]
        paused_at_ms = min(pauses) if pauses else None
        if paused_at_ms:  # its age grows: set every time
            self.paused_s.set(max(now_ms() - paused_at_ms, 0) / 1000)
        if len(self._by_shard) > 1:
            shards = [h for _, h in self._by_shard.values()]
            held = tuple(sum(counts) for counts in zip(*shards, strict=True))
        if (paused_at_ms, held) == self._last:
            return
        self._last = (paused_at_ms, held)
        self.paused.set(1 if paused_at_ms else 0)
        if not paused_at_ms:
            self.paused_s.set(0)
        for gauge, count in zip(self.held.values(), held, strict=True):
            gauge.set(count)
