"""Per-minute history of each queue: how many jobs were enqueued and how many
tries started and ended by each outcome (complete, retrying, snoozed, dead,
cancelled),
per job type, and how long started jobs waited.

Written by the lifecycle scripts where each change happens, one HINCRBY per
event: submit.lua counts `enqueued`; finish.lua counts a try's outcome (named
as the state it left the job in: jobs.TryOutcome) and adds its queue wait (due
to start) to `wait_ms`, in the minute the try ended. A try a shutdown cut short
(`interrupted`) does not count and is not in the history. Every try that ran ends in
exactly one outcome, so `started` is their sum (a try is counted when it
ends: the last few seconds lack the tries still running) and the queue
latency of a minute is `wait_ms` / `started`. Keeping `started` apart would
cost a command per job more (the claim does not know job types).

A minute is final once it has passed (give or take a worker's clock): the
api's `HistoryReader` keeps final minutes, so a history query costs Redis
the minutes it has not read before, and a chart polled by many clients costs
about one read per queue per minute whatever its span.

Layout (keys.py): `conveyor:{queue}:history:{minute}` (per shard of a queue
of several, read together) (minute = Unix ms //
60,000), a hash of `{job type}:{event}` -> count (`wait_ms`: the sum of queue
waits, due to start, of the tries started that minute), expiring
HISTORY_TTL_S (72 h) after its first write. So a queue holds at most 4,320
such hashes, each of at most 7 fields per job type: about
4,320 x (90 + 7 x 35 x job types) bytes: under 1 MB per job type of the
queue at the most (a small hash is a listpack in Redis), whatever the job rate.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from conveyor_core import keys
from conveyor_core.jobs import TryOutcome, now_ms

# Per-minute history is kept this long.
HISTORY_TTL_S = 72 * 3600

# The outcomes of a try that counts: `started` is their sum.
OUTCOMES: tuple[str, ...] = tuple(o.value for o in TryOutcome if o is not TryOutcome.INTERRUPTED)
EVENTS = ("enqueued", "started", *OUTCOMES)
# Outcome names written before they were the states' names; minutes that hold
# them (for the history's 72 h after an upgrade) read as today's names.
FORMER_NAMES = {"completed": TryOutcome.COMPLETE.value, "retried": TryOutcome.RETRYING.value}
MINUTE_MS = 60_000
MAX_MINUTES = HISTORY_TTL_S // 60


def history_key(queue: str, minute: int) -> str:
    return keys.queue_key(queue, f"history:{minute}")


def parse_field(name: bytes | str) -> tuple[str, str]:
    """A history field, `{job type}:{event}`, as (job type, event by today's name)."""
    job_type, _, event = (name.decode() if isinstance(name, bytes) else name).rpartition(":")
    return job_type, FORMER_NAMES.get(event, event)


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


# A minute that ended this long ago gets no more counts (a worker's clock may
# run a little behind the api's), so a reader may keep it.
FINAL_AFTER_MS = 2 * MINUTE_MS
# Hashes (minutes of a shard) read per round trip: a long span is a few
# bounded replies, with other requests served in between.
READ_CHUNK_MINUTES = 360


def _minute(minute: int, raws: Sequence[dict[bytes, bytes]]) -> Minute:
    """One minute from its hash in each shard of its queue, counts summed."""
    entry = Minute(minute)
    for raw in raws:
        for name, value in raw.items():
            job_type, event = parse_field(name)
            if event == "wait_ms":
                entry.wait_ms[job_type] = entry.wait_ms.get(job_type, 0) + int(value)
            else:  # a minute of an upgrade may hold an outcome under both names
                counts = entry.counts.setdefault(job_type, {})
                counts[event] = counts.get(event, 0) + int(value)
    for counts in entry.counts.values():
        if started := sum(counts.get(e, 0) for e in OUTCOMES):
            counts["started"] = started
    return entry


async def _read(redis: "Redis", shards: Sequence[str], minutes: Sequence[int]) -> list[Minute]:
    """These minutes of a queue, its `shards` summed (keys.shard_names; a
    queue of one shard: its name), READ_CHUNK_MINUTES hashes per round trip."""
    out: list[Minute] = []
    per_trip = max(1, READ_CHUNK_MINUTES // len(shards))
    for start in range(0, len(minutes), per_trip):
        chunk = minutes[start : start + per_trip]
        async with redis.pipeline(transaction=False) as pipe:
            for minute in chunk:
                for shard in shards:
                    pipe.hgetall(history_key(shard, minute))
            replies = await pipe.execute()
        per = len(shards)
        out += [_minute(m, replies[i * per : (i + 1) * per]) for i, m in enumerate(chunk)]
    return out


def _span(minutes: int, until_ms: int | None) -> range:
    minutes = max(1, min(minutes, MAX_MINUTES))
    last = (until_ms if until_ms is not None else now_ms()) // MINUTE_MS
    return range(last - minutes + 1, last + 1)


async def read_history(
    redis: "Redis",
    queue: str,
    minutes: int,
    until_ms: int | None = None,
    shards: Sequence[str] = (),
) -> list[Minute]:
    """The last `minutes` minutes of `queue` (to `until_ms`), oldest first;
    over its `shards` (Catalog.shards) when it has several."""
    return await _read(redis, shards or [queue], _span(minutes, until_ms))


class HistoryReader:
    """Reads queues' history, keeping each minute that can no longer change: a
    chart of the last 72 hours, polled every few seconds by any number of
    clients, costs Redis only its newest minutes, not its whole span. Keeps
    at most about MAX_MINUTES minutes per queue."""

    def __init__(self, redis: "Redis") -> None:
        self.redis = redis
        self._final: dict[str, dict[int, Minute]] = {}

    async def read(
        self,
        queue: str,
        minutes: int,
        until_ms: int | None = None,
        shards: Sequence[str] = (),
    ) -> list[Minute]:
        """As `read_history`; the minutes kept are shared: do not change them."""
        at_ms = now_ms()
        span = _span(minutes, until_ms)
        final_before = (at_ms - FINAL_AFTER_MS) // MINUTE_MS
        kept = self._final.setdefault(queue, {})
        fresh = {
            m.minute: m
            for m in await _read(self.redis, shards or [queue], [m for m in span if m not in kept])
        }
        kept.update((minute, m) for minute, m in fresh.items() if minute < final_before)
        if len(kept) > MAX_MINUTES:  # out of every span now: forget them
            oldest = at_ms // MINUTE_MS - MAX_MINUTES
            for minute in [m for m in kept if m < oldest]:
                del kept[minute]
        return [kept[m] if m in kept else fresh[m] for m in span]

    def kept(self, queue: str) -> int:
        """How many minutes of `queue` this reader keeps."""
        return len(self._final.get(queue, {}))
