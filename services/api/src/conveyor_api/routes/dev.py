"""`/v1/dev/mail`: the mails `make run`'s local catcher caught, newest first.

Mounted only in development mode (the api's CONVEYOR_API_DEVELOPMENT, which
`make run` sets), so a production api has no such route and nothing in its
OpenAPI document. The catcher (conveyor_core.local.mail_catcher) writes the list.
"""

import json
from datetime import UTC, datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from conveyor_api.auth import Scope, require
from conveyor_api.deps import RedisDep
from conveyor_core.keys import CAUGHT_MAIL_KEY

router = APIRouter(prefix="/v1/dev", tags=["development"])

# The status page shows at most this many (the catcher keeps about as many).
SHOWN_MAILS = 50


class CaughtMail(BaseModel):
    """One mail as the local catcher received it."""

    received_at: datetime
    sender: str = Field(description="The envelope's sender.")
    to: list[str] = Field(description="The envelope's recipients.")
    subject: str
    message_id: str
    body: str = Field(description="The plain-text body (cut if very long).")


class CaughtMails(BaseModel):
    """Answer of `GET /v1/dev/mail`."""

    items: list[CaughtMail]


@router.get(
    "/mail",
    summary="Mails caught by the local mail catcher (development only)",
    dependencies=[Depends(require(Scope.JOBS_READ))],
)
async def list_caught_mail(redis: RedisDep) -> CaughtMails:
    raw: list[bytes] = await redis.lrange(CAUGHT_MAIL_KEY, 0, SHOWN_MAILS - 1)  # type: ignore[misc]
    items = []
    for entry in raw:
        mail = json.loads(entry)
        items.append(
            CaughtMail(
                received_at=datetime.fromtimestamp(mail["received_at"], UTC),
                sender=mail["from"],
                to=mail["to"],
                subject=mail["subject"],
                message_id=mail["message_id"],
                body=mail["body"],
            )
        )
    return CaughtMails(items=items)
