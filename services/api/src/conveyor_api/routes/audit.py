"""`/v1/audit` (who did what) and `/v1/whoami` (the caller's key and scopes,
which the status page reads to hide the controls a key may not use)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from conveyor_api import audit
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import RedisDep

router = APIRouter(prefix="/v1", tags=["audit"])


class AuditEntryPublic(BaseModel):
    id: str
    at: datetime
    who: str
    action: str
    target: str
    count: int
    detail: dict[str, Any]


class AuditList(BaseModel):
    items: list[AuditEntryPublic]
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
    entries = await audit.read(redis, limit, before)
    items = [
        AuditEntryPublic(
            id=e.id,
            at=e.at,
            who=e.who,
            action=e.action,
            target=e.target,
            count=e.count,
            detail=e.detail,
        )
        for e in entries
    ]
    return AuditList(items=items, next_before=items[-1].id if len(items) == limit else None)
