"""Rewrite pickled job data as JSON, once, when upgrading from a release that pickled it.

    python -m conveyor_core.upgrade_pickles [--dry-run]

Older releases stored each job's data (`arq:job:{id}`) with arq's default
serializer, pickle; this release reads JSON only (serializer.py) and
dead-letters a pickle unrun. This command finds the jobs of every queue of
the catalog (`CONVEYOR_JOB_MODULES`): those in arq's queue (waiting, running,
retrying) and those in the state indexes (running, retrying, complete, dead,
cancelled), and rewrites each pickled job key as JSON, keeping its expiry.
A value that changed since it was read (a job that ended, a requeue) is left
alone and counted; run the command again to take it.

It unpickles what it finds, so it runs with the operator's trust, against the
Redis of `REDIS_URL` (and the other `REDIS_*` settings), once, before the new
workers start (see docs/how-to/upgrade.md). It prints what it did, and exits
1 when some job data could not be converted (their ids are listed; a worker
dead-letters them).
"""

import argparse
import asyncio
import pickle
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import SerializationError

from conveyor_core import keys
from conveyor_core.catalog import Catalog, load_catalog
from conveyor_core.redis import create_redis
from conveyor_core.serializer import job_serializer, loads
from conveyor_core.settings import RedisSettings

# Pickle's first byte from protocol 2 on (PROTO); arq has always used a later one.
PICKLE_PROTO = b"\x80"
# Job keys read per round trip.
BATCH = 500
# Replace a job key's value only if it is still the one read; keep its expiry.
SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


@dataclass
class Upgrade:
    """What the rewrite found and did."""

    seen: int = 0
    already_json: int = 0
    rewritten: int = 0
    # Changed or gone between the read and the rewrite: left alone.
    changed: int = 0
    # Pickles that do not unpickle, or hold what JSON cannot: job id, why.
    refused: list[tuple[str, str]] = field(default_factory=list)
    # Neither JSON nor a pickle: job ids.
    unknown: list[str] = field(default_factory=list)


def as_json(raw: bytes) -> bytes:
    """A pickled arq job dict as JSON job data; SerializationError if it cannot be."""
    try:
        data = pickle.loads(raw)  # noqa: S301 - the operator's one-time rewrite of their own data
    except Exception as exc:
        raise SerializationError(f"does not unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or not {"f", "k", "et"} <= data.keys():
        raise SerializationError("not arq job data")
    return job_serializer(data)


async def _job_ids(redis: ArqRedis, catalog: Catalog) -> AsyncIterator[str]:
    """Each job of the catalog's queues (every shard), once: in arq's queue or
    in a state index."""
    seen: set[str] = set()
    for queue in catalog.all_shards():
        for name in (queue, *(keys.index_key(queue, s) for s in keys.INDEXED_STATES)):
            async for member, _ in redis.zscan_iter(name, count=BATCH):
                job_id = member.decode()
                if job_id not in seen:
                    seen.add(job_id)
                    yield job_id


async def upgrade(redis: ArqRedis, catalog: Catalog, *, dry_run: bool = False) -> Upgrade:
    done = Upgrade()
    swap = redis.register_script(SWAP)
    batch: list[str] = []

    async def rewrite(job_ids: list[str]) -> None:
        async with redis.pipeline(transaction=False) as pipe:  # job keys span slots
            for job_id in job_ids:
                pipe.get(job_key_prefix + job_id)
            values = await pipe.execute()
        for job_id, raw in zip(job_ids, values, strict=True):
            if raw is None:
                continue
            done.seen += 1
            if not raw.startswith(PICKLE_PROTO):
                try:
                    loads(raw)
                except SerializationError:
                    done.unknown.append(job_id)
                else:
                    done.already_json += 1
                continue
            try:
                new = as_json(raw)
            except SerializationError as exc:
                done.refused.append((job_id, str(exc)))
                continue
            if dry_run or await swap(keys=[job_key_prefix + job_id], args=[raw, new]):
                done.rewritten += 1
            else:
                done.changed += 1

    async for job_id in _job_ids(redis, catalog):
        batch.append(job_id)
        if len(batch) == BATCH:
            await rewrite(batch)
            batch = []
    if batch:
        await rewrite(batch)
    return done


def report(done: Upgrade, dry_run: bool) -> str:
    rewritten = "to rewrite as JSON (dry run)" if dry_run else "rewritten as JSON"
    lines = [
        f"job keys read: {done.seen}",
        f"already JSON: {done.already_json}",
        f"pickles {rewritten}: {done.rewritten}",
        f"changed while read, left alone (run again): {done.changed}",
        f"pickles that cannot be converted: {len(done.refused)}",
        *(f"  {job_id}: {why}" for job_id, why in done.refused),
        f"neither JSON nor a pickle: {len(done.unknown)}",
        *(f"  {job_id}" for job_id in done.unknown),
    ]
    return "\n".join(lines)


async def _main(dry_run: bool) -> Upgrade:
    redis = create_redis(RedisSettings())
    try:
        return await upgrade(redis, load_catalog(), dry_run=dry_run)
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conveyor_core.upgrade_pickles",
        description="Rewrite pickled job data as JSON (once, when upgrading).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be rewritten; write nothing"
    )
    args = parser.parse_args(argv)
    done = asyncio.run(_main(args.dry_run))
    print(report(done, args.dry_run))
    return 1 if done.refused or done.unknown else 0


if __name__ == "__main__":
    sys.exit(main())
