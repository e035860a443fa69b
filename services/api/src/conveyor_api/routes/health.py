"""Probes for the orchestrator: liveness and readiness."""

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from conveyor_api.deps import RedisDep, SettingsDep
from conveyor_api.problems import REDIS_EVICTS_PROBLEM, problem_response, redis_unavailable
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisFault, record_redis_fault, redis_fault
from conveyor_core.redis_health import RedisHealth

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis answers and will not drop jobs, so the api can take traffic",
    responses={
        503: {
            "description": "Redis did not answer PING in time, or its maxmemory-policy "
            "evicts (unless REDIS_ALLOW_EVICTION is set)"
        }
    },
)
async def readyz(request: Request, redis: RedisDep, settings: SettingsDep) -> Response:
    health: RedisHealth = request.app.state.redis_health
    try:
        await asyncio.wait_for(redis.ping(), timeout=settings.readiness_timeout_s)
        if health.memory is None:  # not read yet (Redis was down at start): read it now
            await asyncio.wait_for(health.check(), timeout=settings.readiness_timeout_s)
    except REDIS_FAULT_ERRORS as exc:
        fault = redis_fault(exc) or RedisFault.UNREACHABLE
        record_redis_fault(fault, exc, "GET /readyz")
        return redis_unavailable(request, settings.retry_after_s, fault)
    if reason := health.not_ready_reason:
        return problem_response(
            503,
            "Redis may evict jobs",
            reason,
            instance=request.url.path,
            problem_type=REDIS_EVICTS_PROBLEM,
            redis=health.public(),
        )
    return JSONResponse({"status": "ready", "redis": health.public()})
