"""A real SMTP server for tests (aiosmtpd, in a thread), that can refuse mail on purpose."""

import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from conveyor_core.local.redis_server import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        payload = self.message.get_payload(decode=True)
        assert isinstance(payload, bytes)
        return payload.decode()

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)


class Mailbox:
    """The handler: keeps what it accepts, refuses the first `refuse` mails with
    `reply`, and refuses the addresses in `unknown` as a real server does (550,
    naming the address)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused = 0
        self.refuse = 0
        self.reply = "451 4.3.0 Try again later"
        self.unknown: set[str] = set()
        self._lock = threading.Lock()

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.unknown:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        with self._lock:
            if self.refused < self.refuse:
                self.refused += 1
                return self.reply
            content = envelope.content
            assert isinstance(content, bytes)
            self.received.append(
                Received(
                    str(envelope.mail_from),
                    [str(r) for r in envelope.rcpt_tos],
                    message_from_bytes(content),
                )
            )
        return "250 OK"


class SmtpServer:
    """Start, stop and restart on the same port, like a mail server going down."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mailbox = Mailbox()
        self._controller: Controller | None = None

    def start(self) -> "SmtpServer":
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def env(self) -> dict[str, str]:
        """The worker's settings for this server."""
        return {
            "CONVEYOR_SMTP_HOST": "127.0.0.1",
            "CONVEYOR_SMTP_PORT": str(self.port),
            "CONVEYOR_SMTP_TLS": "none",
            "CONVEYOR_SMTP_FROM": "conveyor@example.com",
        }

    @property
    def received(self) -> list[Received]:
        return list(self.mailbox.received)

    def wait_for(self, count: int, timeout_s: float = 30, **match: Any) -> list[Received]:
        """Wait until `count` mails arrived (with the given headers, if any)."""
        deadline = time.monotonic() + timeout_s
        while True:
            mails = [m for m in self.received if all(m.header(k) == v for k, v in match.items())]
            if len(mails) >= count or time.monotonic() > deadline:
                return mails
            time.sleep(0.05)
