"""The live worker processes: each announces itself about once a second from
its poll loop (one pipelined round trip, nothing per job); the api reads
who is alive.

Layout (keys.py): `conveyor:worker:{name}` is a worker's JSON card (host or
pod name, pid, queue, concurrency, the ids of the jobs it runs, version,
when it was last seen), expiring WORKER_TTL_S after its last announcement;
`conveyor:workers` is a sorted set of names by last-seen time, trimmed of the
stale ones by each reader, so both stay as small as the live worker pool.
"""

import json
from dataclasses import asdict, dataclass, field

from redis.asyncio import Redis

from conveyor_core import keys
from conveyor_core.cluster import ClusterClient
from conveyor_core.jobs import now_ms

# A worker announces itself this often (at most), from its poll loop.
ANNOUNCE_EVERY_S = 1.0
# A worker not heard from for this long is gone.
WORKER_TTL_S = 10


@dataclass(slots=True)
class WorkerCard:
    name: str  # host (pod) name and pid
    host: str
    pid: int
    queue: str
    concurrency: int
    running: list[str] = field(default_factory=list)
    version: str = ""
    last_seen_ms: int = 0


async def announce(redis: "Redis", card: WorkerCard) -> None:
    card.last_seen_ms = now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker_key(card.name), json.dumps(asdict(card)), ex=WORKER_TTL_S)
        pipe.zadd(keys.WORKERS, {card.name: card.last_seen_ms})
        await pipe.execute()


async def withdraw(redis: "Redis", name: str) -> None:
    """A worker that stops says so, rather than letting its card expire."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker_key(name))
        pipe.zrem(keys.WORKERS, name)
        await pipe.execute()


async def live_workers(redis: "Redis") -> list[WorkerCard]:
    """The workers heard from within WORKER_TTL_S, by name."""
    await redis.zremrangebyscore(keys.WORKERS, "-inf", now_ms() - WORKER_TTL_S * 1000)
    names = [n.decode() for n in await redis.zrange(keys.WORKERS, 0, -1)]
    if not names:
        return []
    card_keys = [keys.worker_key(n) for n in names]
    if isinstance(redis, ClusterClient):
        # The cards are in many slots: one MGET per slot (as many as live workers at most).
        cards = await redis.mget_nonatomic(card_keys)
    else:
        cards = await redis.mget(card_keys)
    return [WorkerCard(**json.loads(raw)) for raw in cards if raw]
