"""Counts since they were last taken: job outcomes per type, and a job module's own.

The store bumps `{job type}:{complete|retried|dead}` in the same Lua script as
the change it counts, so the counts match the job records exactly. A job
module may count events of its own in the same hash (`COUNTS_KEY`, a field
`{name}:{event}`), in its own scripts. One job takes the counts over at a
time (`take_counts`): each count lands in exactly one taker, and a retry of
the taking job gets the same numbers. The hash is bounded by the number of
names counted.
"""

from dataclasses import dataclass, field

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.jobs import now_ms
from conveyor_core.store import DEAD_RETENTION_S, lua_script

# The outcomes the store counts per job type.
OUTCOMES = ("complete", "retried", "dead")
# The hash of counts since the last take, for a job module's own `{name}:{event}` fields.
COUNTS_KEY = keys.STATS_PENDING


@dataclass(frozen=True, slots=True)
class Counts:
    """What was counted between two takes."""

    # name (a job type, or a module's own) -> event (complete, retried, dead, ...) -> count
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


async def take_counts(redis: ArqRedis, run_id: str) -> Counts:
    """The counts since the last take, now owned by run `run_id`; a retry of
    the same run gets the same counts, and no count goes to two runs."""
    script = redis.register_script(lua_script("stats_take"))
    flat = await script(
        keys=[keys.STATS_PENDING, keys.stats_digest_key(run_id)],
        args=[now_ms(), DEAD_RETENTION_S],
    )
    pairs = [item.decode() for item in flat]
    return parse_counts(dict(zip(pairs[::2], pairs[1::2], strict=True)))
