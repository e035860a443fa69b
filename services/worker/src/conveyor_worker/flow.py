"""What the worker's claim saw of flow control, exported as metrics.

Every replica exports the same queue state from its own claims; the alert
rules keep the largest per queue. A worker claims at least once per idle poll,
so the figures are at most that old.
"""

from conveyor_core.jobs import now_ms
from conveyor_core.metrics import JOBS_HELD, QUEUE_PAUSED, QUEUE_PAUSED_SECONDS
from conveyor_core.store import Claim


def record_claim(queue: str, claim: Claim) -> None:
    paused_s = max(now_ms() - claim.paused_at_ms, 0) / 1000 if claim.paused_at_ms else 0.0
    QUEUE_PAUSED.labels(queue).set(1 if claim.paused_at_ms else 0)
    QUEUE_PAUSED_SECONDS.labels(queue).set(paused_s)
    for reason, count in claim.held.items():
        JOBS_HELD.labels(queue, reason.value).set(count)
