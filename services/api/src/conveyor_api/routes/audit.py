"""`/v1/audit` (who did what) and `/v1/whoami` (the caller's key and scopes,
which the status page reads to hide the controls a key may not use)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from conveyor_api import audit
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import RedisDep

router = APIRouter(prefix="/v1", tags=["audit"])


class AuditList(BaseModel):
    items: list[audit.AuditEntry]
    next_before: str | None


class WhoAmI(BaseModel):
    name: str
    scopes: list[str]


@router.get("/whoami", summary="The caller's api key: its name and scopes")
async def whoami(key: Annotated[ApiKey, Depends(require(Scope.JOBS_READ))]) -> WhoAmI:
    return WhoAmI(name=key.name, scopes=sorted(s.value for s in key.scopes))


@router.get(
    "/audit",
    summary="Operator actions, newest first",
    dependencies=[Depends(require(Scope.JOBS_READ))],
)
async def read_audit(
    redis: RedisDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[str | None, Query(max_length=40, pattern=r"^\d+-\d+$")] = None,
) -> AuditList:
    items = await audit.read(redis, limit, before)
    return AuditList(items=items, next_before=items[-1].id if len(items) == limit else None)
