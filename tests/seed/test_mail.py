"""The mailer against a real SMTP server: once per key, 4xx retried, 5xx permanent."""

import aiosmtplib
import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import PermanentJobError
from conveyor_seed import keys
from conveyor_seed.mail import Mailer, MailRejectedError, SmtpNotConfiguredError, message_id_for
from conveyor_seed.settings import SmtpSettings
from tests.support.smtp import SmtpServer


def mailer_for(smtp: SmtpServer, redis: ArqRedis) -> Mailer:
    settings = SmtpSettings(host="127.0.0.1", port=smtp.port, tls="none", timeout_s=5)
    return Mailer(settings, redis)


async def test_a_key_is_sent_once(smtp: SmtpServer, redis: ArqRedis) -> None:
    mailer = mailer_for(smtp, redis)
    first = await mailer.send_once("k1", to="a@example.com", subject="Hi", body="Hello")
    again = await mailer.send_once("k1", to="a@example.com", subject="Hi", body="Hello")
    assert first.now is True
    assert again.now is False
    assert again.message_id == first.message_id == message_id_for("k1", "conveyor@localhost")
    assert len(smtp.received) == 1
    mail = smtp.received[0]
    assert mail.header("Message-ID") == first.message_id
    assert mail.recipients == ["a@example.com"]
    assert mail.body.strip() == "Hello"
    assert await redis.ttl(keys.mail_sent_key("k1")) > 0
    await mailer.send_once("k2", to="a@example.com", subject="Hi", body="Hello")
    assert len(smtp.received) == 2


async def test_a_temporary_refusal_raises_for_a_retry_and_marks_nothing(
    smtp: SmtpServer, redis: ArqRedis
) -> None:
    smtp.mailbox.refuse = 1
    mailer = mailer_for(smtp, redis)
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await mailer.send_once("k", to="a@example.com", subject="s", body="b")
    assert refused.value.code == 451
    assert not isinstance(refused.value, PermanentJobError)
    assert not await redis.exists(keys.mail_sent_key("k"))
    await mailer.send_once("k", to="a@example.com", subject="s", body="b")
    assert len(smtp.received) == 1


async def test_a_permanent_refusal_is_permanent(smtp: SmtpServer, redis: ArqRedis) -> None:
    smtp.mailbox.refuse, smtp.mailbox.reply = 1, "550 5.1.1 No such user"
    with pytest.raises(MailRejectedError, match="550"):
        await mailer_for(smtp, redis).send_once("k", to="a@example.com", subject="s", body="b")


async def test_a_server_that_is_down_raises_for_a_retry(redis: ArqRedis) -> None:
    down = SmtpServer()  # never started: connection refused
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await mailer_for(down, redis).send_once("k", to="a@example.com", subject="s", body="b")


async def test_without_a_host_mail_fails_at_once(redis: ArqRedis) -> None:
    with pytest.raises(SmtpNotConfiguredError, match="CONVEYOR_SMTP_HOST"):
        await Mailer(SmtpSettings(host=""), redis).send_once(
            "k", to="a@example.com", subject="s", body="b"
        )
    assert issubclass(SmtpNotConfiguredError, PermanentJobError)


def test_smtp_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("CONVEYOR_SMTP_PORT", "465")
    monkeypatch.setenv("CONVEYOR_SMTP_TLS", "tls")
    monkeypatch.setenv("CONVEYOR_SMTP_USERNAME", "user")
    monkeypatch.setenv("CONVEYOR_SMTP_PASSWORD", "secret")
    monkeypatch.setenv("CONVEYOR_SMTP_FROM", "noreply@example.com")
    settings = SmtpSettings()
    assert (settings.host, settings.port, settings.tls) == ("mail.example.com", 465, "tls")
    assert settings.username == "user"
    assert settings.password.get_secret_value() == "secret"
    assert "secret" not in repr(settings)
    assert settings.from_ == "noreply@example.com"
