"""Per-minute history of each queue: what was enqueued, started, completed,
retried, snoozed, dead and cancelled, per job type, and how long started jobs waited.

Written by the lifecycle scripts where each change happens, one HINCRBY per
event: submit.lua counts `enqueued`; finish.lua counts a try's outcome
(`completed`, `retried`, `snoozed`, `dead`, `cancelled`) and adds its queue wait (due to
start) to `wait_ms`, in the minute the try ended. Every try that ran ends in
exactly one outcome, so `started` is their sum (a try is counted when it
ends: the last few seconds lack the tries still running) and the queue
latency of a minute is `wait_ms` / `started`. Keeping `started` apart would
cost a command per job more (the claim does not know job types).

Layout (keys.py): `conveyor:{queue}:history:{minute}` (minute = Unix ms //
60,000), a hash of `{job type}:{event}` -> count (`wait_ms`: the sum of queue
waits, due to start, of the tries started that minute), expiring
HISTORY_TTL_S (72 h) after its first write. So a queue holds at most 4,320
such hashes, each of at most 7 fields per job type: about
4,320 x (90 + 7 x 35 x job types) bytes: under 1 MB per job type of the
queue at the most (a small hash is a listpack in Redis), whatever the job rate.
"""

from dataclasses import dataclass, field

from redis.asyncio import Redis

from conveyor_core import keys
from conveyor_core.jobs import now_ms

# Per-minute history is kept this long.
HISTORY_TTL_S = 72 * 3600
EVENTS = ("enqueued", "started", "completed", "retried", "snoozed", "dead", "cancelled")
# The outcomes of a try that ran: `started` is their sum.
OUTCOMES = ("completed", "retried", "snoozed", "dead", "cancelled")
MINUTE_MS = 60_000
MAX_MINUTES = HISTORY_TTL_S // 60


def history_key(queue: str, minute: int) -> str:
    return keys.queue_key(queue, f"history:{minute}")


@dataclass(slots=True)
class Minute:
    """One minute of one queue: counts per job type and event, and queue wait."""

    minute: int  # Unix ms // 60,000
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    wait_ms: dict[str, int] = field(default_factory=dict)

    def total(self, event: str) -> int:
        return sum(c.get(event, 0) for c in self.counts.values())

    def mean_wait_ms(self) -> float | None:
        started = self.total("started")
        return sum(self.wait_ms.values()) / started if started else None


async def read_history(
    redis: "Redis", queue: str, minutes: int, until_ms: int | None = None
) -> list[Minute]:
    """The last `minutes` minutes of `queue` (to `until_ms`), oldest first; one round trip."""
    minutes = max(1, min(minutes, MAX_MINUTES))
    last = (until_ms if until_ms is not None else now_ms()) // MINUTE_MS
    span = range(last - minutes + 1, last + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(history_key(queue, minute))
        replies = await pipe.execute()
    out = []
    for minute, raw in zip(span, replies, strict=True):
        entry = Minute(minute)
        for name, value in raw.items():
            job_type, _, event = name.decode().rpartition(":")
            if event == "wait_ms":
                entry.wait_ms[job_type] = int(value)
            else:
                entry.counts.setdefault(job_type, {})[event] = int(value)
        for counts in entry.counts.values():
            if started := sum(counts.get(e, 0) for e in OUTCOMES):
                counts["started"] = started
        out.append(entry)
    return out
