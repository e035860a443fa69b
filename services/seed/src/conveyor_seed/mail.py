"""Sending mail over SMTP, once per mail key however often a job is tried.

The guarantee: a mail whose key is marked sent is never sent again. The mark
is written right after the server accepts the mail (its 250 reply), so the
one window for a second copy is a worker killed between that reply and the
Redis write, a few milliseconds. A retry in that window sends the mail again
with the same Message-ID, which mail systems use to drop duplicates. Marking
before sending would instead lose the mail whenever the send fails after the
mark, which is worse for a notification that must arrive.
"""

import hashlib
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from arq.connections import ArqRedis

from conveyor_core import PermanentJobError
from conveyor_core.jobs import DEAD_RETENTION_S
from conveyor_seed import keys
from conveyor_seed.settings import MailPolicySettings, SmtpSettings, domain_of

logger = logging.getLogger(__name__)

# A sent mark outlives any job that could send the mail again, dead letters included.
SENT_MARK_TTL_S = DEAD_RETENTION_S + 86_400
# SMTP replies from this code up are permanent: retrying cannot help.
PERMANENT_REPLY_CODE = 500


class SmtpNotConfiguredError(PermanentJobError):
    """No SMTP host is set; email jobs fail at once rather than pretend to send."""


class MailRejectedError(PermanentJobError):
    """The server refused the mail for good (a 5xx reply)."""


class RecipientNotAllowedError(PermanentJobError):
    """The recipient's domain is not in CONVEYOR_MAIL_ALLOWED_DOMAINS: no retry
    can change that, and nothing is sent."""


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    # False when an earlier try had sent it already.
    now: bool


def message_id_for(mail_key: str, sender: str) -> str:
    """The same mail key always gives the same Message-ID."""
    domain = sender.rpartition("@")[2] or "conveyor.local"
    digest = hashlib.sha256(mail_key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


class Mailer:
    """SMTP per settings, to the allowed domains only, with the sent marks in Redis."""

    def __init__(self, settings: SmtpSettings, redis: ArqRedis, policy: MailPolicySettings) -> None:
        self.settings = settings
        self.redis = redis
        self.policy = policy

    async def send_once(
        self,
        mail_key: str,
        *,
        to: str,
        subject: str,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> Sent:
        """Send the mail unless the one with this key was sent before, or its
        recipient's domain is not allowed (RecipientNotAllowedError)."""
        if not self.policy.allows(to):
            # The domain only: the address is personal data, and errors are kept and shown.
            raise RecipientNotAllowedError(
                f"mail to a {domain_of(to)!r} address refused: that domain is not in "
                "CONVEYOR_MAIL_ALLOWED_DOMAINS"
            )
        mark = keys.mail_sent_key(mail_key)
        earlier: bytes | None = await self.redis.get(mark)
        if earlier is not None:
            logger.info("mail %s was sent before; not sending it again", mail_key)
            return Sent(earlier.decode(), now=False)
        if not self.settings.configured:
            raise SmtpNotConfiguredError("SMTP is not configured: set CONVEYOR_SMTP_HOST")
        sender = self.settings.from_
        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id = message_id_for(mail_key, sender)
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(body)
        await self._deliver(message)
        await self.redis.set(mark, message_id, ex=SENT_MARK_TTL_S)
        return Sent(message_id, now=True)

    async def _deliver(self, message: EmailMessage) -> None:
        settings = self.settings
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.host,
                port=settings.port,
                use_tls=settings.tls == "tls",
                start_tls=settings.tls == "starttls",
                username=settings.username or None,
                password=settings.password.get_secret_value() or None,
                timeout=settings.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            if all(code >= PERMANENT_REPLY_CODE for code in codes):
                raise MailRejectedError(f"recipients refused: {exc.recipients}") from exc
            raise
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx (greylisting, a full queue) is retried; 5xx (bad address,
            # wrong credentials) is not.
            if exc.code >= PERMANENT_REPLY_CODE:
                raise MailRejectedError(f"SMTP {exc.code}: {exc.message}") from exc
            raise
