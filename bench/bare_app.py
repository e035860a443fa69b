"""The bare FastAPI + arq app Conveyor's api is measured against.

What the seeds' tutorial would build: an arq pool created once in the
lifespan, `POST /task` that enqueues a no-op job, and a read that is one
HGETALL of a job's hash. No auth, no rate limit, no tracing, no logs, no
metrics: the floor an authenticated, observed api is compared with.

`python -m bench.bare_app PORT REDIS_URL` serves it with uvicorn (uvloop,
httptools, no access log), the options `python -m conveyor_api` runs with.
"""

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from conveyor_core.keys import job_key

BARE_QUEUE = "bench:bare"


class TaskCreate(BaseModel):
    """Body of `POST /task`: no fields, as the no-op job takes none."""


class TaskQueued(BaseModel):
    job_id: str


def create_app(redis_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/task", status_code=201)
    async def create_task(body: TaskCreate, request: Request) -> TaskQueued:
        redis: ArqRedis = request.app.state.redis
        job = await redis.enqueue_job("noop", _queue_name=BARE_QUEUE)
        assert job is not None
        return TaskQueued(job_id=job.job_id)

    @app.get("/job/{job_id}")
    async def read_job(job_id: str, request: Request) -> dict[str, str]:
        redis: ArqRedis = request.app.state.redis
        raw: dict[bytes, bytes] = await redis.hgetall(job_key(job_id))  # type: ignore[misc]
        if not raw:
            raise HTTPException(404, "no such job")
        return {k.decode(): v.decode() for k, v in raw.items()}

    return app


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        create_app(redis_url),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
