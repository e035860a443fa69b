"""The audit log: every operator action (cancel, requeue, delete, pause,
resume, bulk) as one entry of a capped Redis stream, readable through the api,
and the same entry as a log line (logger `conveyor.audit`), so the log
pipeline keeps it as long as it keeps logs.

An entry is who (the api key's name), what (the action), the target (a job
id, a queue, or a bulk action's filter as JSON), how many jobs it touched,
the request that asked for it (its request id) and when. Only changes are
entries: an action that changed nothing (pausing a paused queue) is not.
The stream keeps about AUDIT_MAX_ENTRIES entries (XADD MAXLEN ~), so its
size is bounded whatever the rate of actions.
"""

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from conveyor_core import keys
from conveyor_core.jobs import ms_to_datetime
from conveyor_core.logging import bound

logger = logging.getLogger("conveyor.audit")

AUDIT_MAX_ENTRIES = 10_000


class AuditEntry(BaseModel):
    """One operator action, as stored and as the api returns it."""

    id: str
    at: datetime
    who: str
    action: str
    target: str
    count: int
    detail: dict[str, Any]
    request_id: str | None = None


async def record(
    redis: "Redis",
    who: str,
    action: str,
    target: str,
    count: int,
    detail: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    """Append one entry (one XADD) and log it. `request_id`: the request that
    asked for the action (by default the current one's)."""
    request_id = request_id or bound("request_id") or ""
    entry_id = await redis.xadd(
        keys.AUDIT_LOG,
        {
            "who": who,
            "action": action,
            "target": target,
            "count": count,
            "detail": json.dumps(detail or {}),
            "request_id": request_id,
        },
        maxlen=AUDIT_MAX_ENTRIES,
        approximate=True,
    )
    fields = {
        "audit_id": entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
        "who": who,
        "action": action,
        "target": target,
        "count": count,
        "detail": detail or {},
        "request_id": request_id or None,
    }
    logger.info("audit: %s %s %s (%d)", who, action, target, count, extra={"fields": fields})


async def read(redis: "Redis", limit: int, before: str | None = None) -> list[AuditEntry]:
    """The latest `limit` entries, newest first (older than the entry id `before`)."""
    if before is not None and before.strip("0-") == "":
        return []  # nothing is older than the stream's first possible id
    end = f"({before}" if before else "+"
    rows = await redis.xrevrange(keys.AUDIT_LOG, max=end, min="-", count=limit)
    out = []
    for entry_id, raw in rows:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        entry = entry_id.decode()
        out.append(
            AuditEntry(
                id=entry,
                at=ms_to_datetime(int(entry.partition("-")[0])) or datetime.min,
                who=fields.get("who", ""),
                action=fields.get("action", ""),
                target=fields.get("target", ""),
                count=int(fields.get("count") or 0),
                detail=json.loads(fields.get("detail") or "{}"),
                request_id=fields.get("request_id") or None,
            )
        )
    return out
