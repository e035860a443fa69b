"""`make run`'s mail catcher: a local SMTP server that keeps what it is sent.

A fresh machine has no mail server, so without this a job module's mail jobs
(the seed app's among them) would die at once for want of CONVEYOR_SMTP_HOST.
The runner starts it unless CONVEYOR_SMTP_HOST is set, points the services at
it, and the status page lists what it caught (through the api's
development-only `/v1/dev/mail`). Production never starts it: the
chart and the images run the services, not the runner.

Caught mails are kept in Redis, newest first: at most MAX_MAILS, for at most
RETENTION_S, each body cut at MAX_BODY_CHARS.

One address is refused for good, as a real server refuses an unknown mailbox:
`bounce@` any domain gets a 550, so a permanent mail failure (a dead email
job, then a requeue) can be tried without a real mail server.
"""

import json
import logging
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Self

import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from conveyor_core.keys import CAUGHT_MAIL_KEY

logger = logging.getLogger("conveyor.mail")

MAX_MAILS = 100
RETENTION_S = 86_400
MAX_BODY_CHARS = 20_000
# Mail to this local part, at any domain, is refused with a permanent reply.
BOUNCE_LOCAL_PART = "bounce"
BOUNCE_REPLY = "550 5.1.1 mailbox unavailable (the local mail catcher refuses bounce@)"


def caught(envelope: Envelope, now_s: float) -> dict[str, object]:
    """One caught mail as the status page shows it."""
    raw = envelope.content if isinstance(envelope.content, bytes) else b""
    message = message_from_bytes(raw, policy=policy.default)
    body = ""
    if isinstance(message, EmailMessage):
        part = message.get_body(preferencelist=("plain", "html"))
        if part is not None:
            body = str(part.get_content())
    return {
        "received_at": round(now_s, 3),
        "from": envelope.mail_from or "",
        "to": list(envelope.rcpt_tos),
        "subject": str(message.get("Subject", "")),
        "message_id": str(message.get("Message-ID", "")),
        "body": body[:MAX_BODY_CHARS],
    }


class _Keep:
    """aiosmtpd's handler: every mail accepted, then kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.partition("@")[0].lower() == BOUNCE_LOCAL_PART:
            return BOUNCE_REPLY
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        mail = caught(envelope, time.time())
        # A small, local write on the catcher's own thread.
        with self.client.pipeline() as pipe:
            pipe.lpush(CAUGHT_MAIL_KEY, json.dumps(mail))
            pipe.ltrim(CAUGHT_MAIL_KEY, 0, MAX_MAILS - 1)
            pipe.expire(CAUGHT_MAIL_KEY, RETENTION_S)
            pipe.execute()
        logger.info("caught a mail to %s: %s", ", ".join(envelope.rcpt_tos), mail["subject"])
        return "250 OK"


class MailCatcher:
    """An SMTP server on localhost:`port` (on its own thread) while open."""

    def __init__(self, redis_url: str, port: int) -> None:
        self.port = port
        self.client = redis.Redis.from_url(redis_url)
        self.controller = Controller(_Keep(self.client), hostname="127.0.0.1", port=port)

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.controller.stop()
        self.client.close()

    def smtp_env(self) -> dict[str, str]:
        """The services' mail settings that send to this catcher: to any domain,
        since nothing it catches leaves the machine."""
        return {
            "CONVEYOR_SMTP_HOST": "127.0.0.1",
            "CONVEYOR_SMTP_PORT": str(self.port),
            "CONVEYOR_SMTP_TLS": "none",
            "CONVEYOR_MAIL_DEVELOPMENT": "true",
        }
