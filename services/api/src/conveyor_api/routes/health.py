"""Probes for the orchestrator: liveness and readiness."""

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import ResponseError

from conveyor_api.deps import RedisDep, SettingsDep
from conveyor_api.problems import REDIS_EVICTS_PROBLEM, problem_response, redis_unavailable
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisFault, record_redis_fault, redis_fault
from conveyor_core.redis_health import RedisHealth

router = APIRouter(tags=["health"])

# What the probe's two calls may raise: a fault, or INFO refused by the server.
_PROBE_ERRORS: tuple[type[Exception], ...] = (*REDIS_FAULT_ERRORS, ResponseError)


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
    """Ready while Redis answers and keeps what it is given. A full Redis (read
    afresh here: `redis.full`) leaves the api ready: reads, cancels and deletes
    still work there, and only writes get their 507."""
    health: RedisHealth = request.app.state.redis_health
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            await redis.ping()
        # A fresh reading, not the last periodic one: the policy and how full Redis is now.
        async with asyncio.timeout(settings.readiness_timeout_s):
            await health.read_now()
    except _PROBE_ERRORS as exc:
        fault = redis_fault(exc)
        if fault is not None or not isinstance(exc, ResponseError):
            fault = fault or RedisFault.UNREACHABLE
            record_redis_fault(fault, exc, "GET /readyz")
            return redis_unavailable(request, settings.retry_after_s, fault)
        # INFO refused (a managed Redis may forbid it) though PING answered: go on
        # with the last reading (the periodic check says why in the log).
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
