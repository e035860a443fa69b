"""The local mail catcher: a real SMTP exchange, kept in Redis, bounded."""

import json
import smtplib
import subprocess
from email.message import EmailMessage

import pytest
import redis

from conveyor_core.keys import CAUGHT_MAIL_KEY
from conveyor_core.local import mail_catcher
from conveyor_core.local.mail_catcher import MailCatcher
from conveyor_core.local.redis_server import free_port
from tests.support.processes import REPO_ROOT


def send(port: int, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "conveyor@localhost"
    message["To"] = "ada@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject}@localhost>"
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message)


def test_caught_mails_are_kept_newest_first_bounded_and_expiring(redis_url: str) -> None:
    port = free_port()
    with redis.Redis.from_url(redis_url) as client:
        client.delete(CAUGHT_MAIL_KEY)
        with MailCatcher(redis_url, port) as catcher:
            assert catcher.smtp_env() == {
                "CONVEYOR_SMTP_HOST": "127.0.0.1",
                "CONVEYOR_SMTP_PORT": str(port),
                "CONVEYOR_SMTP_TLS": "none",
                "CONVEYOR_MAIL_DEVELOPMENT": "true",
            }
            for n in range(3):
                send(port, f"mail-{n}", "x" * (mail_catcher.MAX_BODY_CHARS + 10))
        raw = client.lrange(CAUGHT_MAIL_KEY, 0, -1)
        mails = [json.loads(m) for m in raw]
        assert [m["subject"] for m in mails] == ["mail-2", "mail-1", "mail-0"]
        assert mails[0]["to"] == ["ada@example.com"]
        assert mails[0]["from"] == "conveyor@localhost"
        assert mails[0]["message_id"] == "<mail-2@localhost>"
        assert len(mails[0]["body"]) == mail_catcher.MAX_BODY_CHARS
        assert 0 < client.ttl(CAUGHT_MAIL_KEY) <= mail_catcher.RETENTION_S
        client.delete(CAUGHT_MAIL_KEY)


def test_mail_to_bounce_is_refused_for_good(redis_url: str) -> None:
    port = free_port()
    message = EmailMessage()
    message["From"] = "conveyor@localhost"
    message["To"] = "bounce@example.com"
    message["Subject"] = "never kept"
    message.set_content("hello")
    with redis.Redis.from_url(redis_url) as client:
        client.delete(CAUGHT_MAIL_KEY)
        with (
            MailCatcher(redis_url, port),
            smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp,
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        ):
            smtp.send_message(message)
        ((code, reply),) = refused.value.recipients.values()
        assert code == 550
        assert b"bounce@" in reply
        assert client.llen(CAUGHT_MAIL_KEY) == 0


def test_production_never_starts_it() -> None:
    """Only `make run` starts the catcher: the images hold no aiosmtpd, so they
    could not, and no chart template or Dockerfile runs the runner."""
    uv = REPO_ROOT / ".tools" / "bin" / "uv"
    for packages in (
        ["--package", "conveyor-api", "--package", "conveyor-seed"],
        ["--package", "conveyor-worker", "--package", "conveyor-seed", "--extra", "worker"],
    ):
        exported = subprocess.run(
            [str(uv), "export", "--frozen", "--no-dev", "--no-hashes", *packages],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "aiosmtpd" not in exported
    deployed = [
        *REPO_ROOT.glob("charts/conveyor/templates/**/*"),
        *REPO_ROOT.glob("services/*/Dockerfile"),
    ]
    assert not [p for p in deployed if p.is_file() and "conveyor_core.local" in p.read_text()]
