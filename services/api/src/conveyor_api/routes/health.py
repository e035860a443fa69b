"""Probes for the orchestrator: liveness and readiness."""

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from conveyor_api.deps import RedisDep, SettingsDep
from conveyor_api.problems import redis_unavailable
from conveyor_core.redis import REDIS_DOWN_ERRORS

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis answers, so the api can take traffic",
    responses={503: {"description": "Redis did not answer PING in time"}},
)
async def readyz(request: Request, redis: RedisDep, settings: SettingsDep) -> Response:
    try:
        await asyncio.wait_for(redis.ping(), timeout=settings.readiness_timeout_s)
    except REDIS_DOWN_ERRORS:
        return redis_unavailable(request, settings.retry_after_s)
    return JSONResponse({"status": "ready"})
