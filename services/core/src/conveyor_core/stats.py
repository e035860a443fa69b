"""Counts since they were last taken: job outcomes per type, and a job module's own.

Job outcomes come from the per-minute history (history.py), which the
lifecycle scripts already write with each change: counting them a second time
for the digest would cost a command per job. A job module may count events of
its own in a hash (`COUNTS_KEY`, a field `{name}:{event}`), in its own
scripts. One job takes the counts over at a time (`take_counts`): each count
lands in exactly one taker, and a retry of the taking job gets the same
numbers.

A take remembers where it stopped (`keys.STATS_TAKEN`): the minute it read
last and that minute's counts as it read them, so the next take counts the
rest of that minute, every minute after it, and the current one so far. Two
limits follow from the history: counts older than its retention (72 h) are
gone, so a digest that does not run for longer loses them; and an outcome is
counted in the minute of its worker's clock, so a worker whose clock runs
behind by more than the time between two takes writes into a minute already
taken, and the digest misses it (the history keeps it).
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.history import HISTORY_TTL_S, MAX_MINUTES, MINUTE_MS, history_key, parse_field
from conveyor_core.jobs import DEAD_RETENTION_S, TryOutcome, now_ms
from conveyor_core.lua import lua_script

# The outcomes counted per job type, by the history's names for them.
OUTCOMES: tuple[str, ...] = (TryOutcome.COMPLETE, TryOutcome.RETRYING, TryOutcome.DEAD)
# The hash of a job module's own `{name}:{event}` counts since the last take.
COUNTS_KEY = keys.STATS_PENDING
# A take whose mark another take moved meanwhile reads again, at most this often.
TAKE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Counts:
    """What was counted between two takes."""

    # name (a job type, or a module's own) -> event (complete, retrying, dead, ...) -> count
    by_name: dict[str, dict[str, int]] = field(default_factory=dict)
    taken_at_ms: int = 0

    def total(self, event: str) -> int:
        return sum(counts.get(event, 0) for counts in self.by_name.values())


def parse_counts(raw: dict[str, str]) -> Counts:
    by_name: dict[str, dict[str, int]] = {}
    taken_at_ms = 0
    for name, value in raw.items():
        if name == "_taken_at_ms":
            taken_at_ms = int(value)
            continue
        owner, _, event = name.rpartition(":")
        counts = by_name.setdefault(owner, {})
        counts[event] = counts.get(event, 0) + int(value)
    return Counts(dict(sorted(by_name.items())), taken_at_ms)


def _outcomes(raw: dict[bytes, bytes]) -> dict[str, int]:
    """A history minute's outcome counts, as `{job type}:{outcome}` -> count."""
    out: dict[str, int] = {}
    for name, value in raw.items():
        job_type, event = parse_field(name)
        if event in OUTCOMES:  # an upgrade's minute may hold one under both names
            field_name = f"{job_type}:{event}"
            out[field_name] = out.get(field_name, 0) + int(value)
    return out


async def outcomes_since(
    redis: ArqRedis, queues: list[str], mark: dict[str, object], at_ms: int
) -> tuple[dict[str, int], dict[str, object]]:
    """Outcome counts from where `mark` stopped to `at_ms`, and the new mark."""
    current = at_ms // MINUTE_MS
    first = int(str(mark.get("minute", current - MAX_MINUTES + 1)))
    first = max(first, current - MAX_MINUTES + 1)
    seen = mark.get("counts") if first == mark.get("minute") else {}
    taken: dict[str, dict[str, int]] = {
        # A mark left before an upgrade names outcomes as the history did then.
        queue: {":".join(parse_field(name)): n for name, n in counts.items()}
        for queue, counts in (seen.items() if isinstance(seen, dict) else ())
    }
    minutes = range(first, current + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            for minute in minutes:
                pipe.hgetall(history_key(queue, minute))
        replies = iter(await pipe.execute())
    counts: dict[str, int] = {}
    now_seen: dict[str, dict[str, int]] = {}
    for queue in queues:
        before = taken.get(queue, {})
        for minute in minutes:
            outcomes = _outcomes(next(replies))
            if minute == current:  # where the next take goes on from
                now_seen[queue] = outcomes
            for name, n in outcomes.items():
                # Of the first minute, less what the last take counted of it.
                n -= before.get(name, 0) if minute == first else 0
                if n > 0:
                    counts[name] = counts.get(name, 0) + n
    return counts, {"minute": current, "counts": now_seen}


async def take_counts(redis: ArqRedis, run_id: str, queues: Iterable[str]) -> Counts:
    """The counts since the last take (job outcomes on `queues`, and the job
    modules' own), now owned by run `run_id`; a retry of the same run gets the
    same counts, and no count goes to two runs."""
    script = redis.register_script(lua_script("stats_take"))
    queues = sorted(set(queues))
    run_key = keys.stats_digest_key(run_id)
    for _ in range(TAKE_ATTEMPTS):
        at_ms = now_ms()
        raw_mark = await redis.get(keys.STATS_TAKEN)
        mark = json.loads(raw_mark) if raw_mark else {}
        outcomes, new_mark = await outcomes_since(redis, queues, mark, at_ms)
        flat = await script(
            keys=[keys.STATS_PENDING, run_key, keys.STATS_TAKEN],
            args=[
                at_ms,
                DEAD_RETENTION_S,
                raw_mark or "",
                json.dumps(new_mark),
                HISTORY_TTL_S,
                *(item for pair in outcomes.items() for item in pair),
            ],
        )
        if flat:
            pairs = [item.decode() for item in flat]
            return parse_counts(dict(zip(pairs[::2], pairs[1::2], strict=True)))
    raise RuntimeError(f"counts not taken after {TAKE_ATTEMPTS} attempts: other takes kept moving")
