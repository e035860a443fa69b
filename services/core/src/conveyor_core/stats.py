"""Counts for the digest: job outcomes per type and documents processed.

They are bumped in the same Lua script as the change they count (finish
for jobs, document_processed for documents), so they match the job records
exactly. One hash holds the counts since the last digest; its size is bounded
by the number of job types.
"""

from dataclasses import dataclass, field

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.jobs import now_ms
from conveyor_core.store import DEAD_RETENTION_S, lua_script

OUTCOMES = ("complete", "retried", "dead")
DOCUMENTS_PROCESSED = "documents:processed"


@dataclass(frozen=True, slots=True)
class DigestCounts:
    """What happened between two digests."""

    # job type -> outcome (complete, retried tries, dead) -> count
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    documents_processed: int = 0
    taken_at_ms: int = 0

    def total(self, outcome: str) -> int:
        return sum(counts.get(outcome, 0) for counts in self.jobs.values())


def parse_counts(raw: dict[str, str]) -> DigestCounts:
    jobs: dict[str, dict[str, int]] = {}
    documents = taken_at_ms = 0
    for name, value in raw.items():
        if name == DOCUMENTS_PROCESSED:
            documents = int(value)
        elif name == "_taken_at_ms":
            taken_at_ms = int(value)
        else:
            job_type, _, outcome = name.rpartition(":")
            counts = jobs.setdefault(job_type, dict.fromkeys(OUTCOMES, 0))
            counts[outcome] = counts.get(outcome, 0) + int(value)
    return DigestCounts(dict(sorted(jobs.items())), documents, taken_at_ms)


async def take_counts(redis: ArqRedis, run_id: str) -> DigestCounts:
    """The counts since the last digest, now owned by run `run_id`; a retry of
    the same run gets the same counts, and no count goes to two runs."""
    script = redis.register_script(lua_script("stats_take"))
    flat = await script(
        keys=[keys.STATS_PENDING, keys.stats_digest_key(run_id)],
        args=[now_ms(), DEAD_RETENTION_S],
    )
    pairs = [item.decode() for item in flat]
    return parse_counts(dict(zip(pairs[::2], pairs[1::2], strict=True)))
