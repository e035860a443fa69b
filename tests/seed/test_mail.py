"""The mailer against a real SMTP server: once per key, 4xx retried, 5xx permanent."""

from pathlib import Path
from typing import Any, cast

import aiosmtplib
import pytest
from arq.connections import ArqRedis
from pydantic import ValidationError

from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.catalog import PermanentJobError
from conveyor_core.context import JobContext
from conveyor_core.store import JobStore
from conveyor_seed import EMAIL_USER, DocumentRef, keys
from conveyor_seed.documents import DocumentStore
from conveyor_seed.jobs.email import email_user
from conveyor_seed.mail import (
    Mailer,
    MailRejectedError,
    RecipientNotAllowedError,
    SmtpNotConfiguredError,
    message_id_for,
)
from conveyor_seed.resources import WORKFLOW, Workflow
from conveyor_seed.settings import MailPolicySettings, SeedSettings, SmtpSettings
from tests.support.smtp import SmtpServer

# Mail may go to example.com addresses only.
POLICY = MailPolicySettings(allowed_domains=["example.com"])


def mailer_for(smtp: SmtpServer, redis: ArqRedis) -> Mailer:
    settings = SmtpSettings(host="127.0.0.1", port=smtp.port, tls="none", timeout_s=5)
    return Mailer(settings, redis, POLICY)


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
        await Mailer(SmtpSettings(host=""), redis, POLICY).send_once(
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


@pytest.mark.parametrize(
    "to", ["a@elsewhere.example", "a@sub.example.com", "a@example.com.evil.example"]
)
async def test_mail_outside_the_allowed_domains_is_refused_for_good(
    smtp: SmtpServer, redis: ArqRedis, to: str
) -> None:
    mailer = mailer_for(smtp, redis)
    with pytest.raises(RecipientNotAllowedError, match="CONVEYOR_MAIL_ALLOWED_DOMAINS") as refused:
        await mailer.send_once("k", to=to, subject="s", body="b")
    assert issubclass(RecipientNotAllowedError, PermanentJobError)  # no retry
    assert to not in str(refused.value)  # the domain is named, not the address
    assert smtp.received == []
    assert not await redis.exists(keys.mail_sent_key("k"))
    await mailer.send_once("k", to="b@EXAMPLE.com", subject="s", body="b")
    assert len(smtp.received) == 1


def test_allowed_domains_are_required_with_a_mail_server_outside_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", raising=False)
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT", raising=False)
    monkeypatch.delenv("CONVEYOR_MAIL_DEVELOPMENT", raising=False)
    assert not MailPolicySettings().allows("a@example.com")  # none allowed: no mail at all
    SeedSettings()  # no mail server: nothing could be sent anyway
    monkeypatch.setenv("CONVEYOR_SMTP_HOST", "mail.example.com")
    with pytest.raises(ValidationError, match="CONVEYOR_MAIL_ALLOWED_DOMAINS is empty"):
        SeedSettings()
    monkeypatch.setenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", " Example.com,example.org. ")
    assert SeedSettings().mail.allowed_domains == ["example.com", "example.org"]
    monkeypatch.setenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", "example.com,not a domain")
    with pytest.raises(ValidationError, match="'not a domain' is not a domain name"):
        SeedSettings()

    monkeypatch.delenv("CONVEYOR_MAIL_ALLOWED_DOMAINS")
    monkeypatch.setenv("CONVEYOR_API_DEVELOPMENT", "true")  # as `make run` sets it
    assert SeedSettings().mail.allows("anyone@anywhere.example")
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT")
    monkeypatch.setenv("CONVEYOR_MAIL_DEVELOPMENT", "true")  # `make run`'s mail catcher
    assert SeedSettings().mail.allows("anyone@anywhere.example")


def test_development_mail_does_not_count_inside_kubernetes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mail to any address is `make run`'s (its catcher keeps every mail); in a
    pod it would make the platform an open relay again."""
    monkeypatch.delenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", raising=False)
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT", raising=False)
    monkeypatch.setenv("CONVEYOR_MAIL_DEVELOPMENT", "true")
    assert MailPolicySettings().allows("anyone@anywhere.example")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as in every pod
    # The api's upload check goes by the allowed domains alone: none, so none.
    assert not MailPolicySettings().allows("anyone@anywhere.example")
    # A worker refuses to start, saying why in one line.
    for development in ("CONVEYOR_MAIL_DEVELOPMENT", "CONVEYOR_API_DEVELOPMENT"):
        monkeypatch.delenv("CONVEYOR_MAIL_DEVELOPMENT", raising=False)
        monkeypatch.setenv(development, "true")
        with pytest.raises(ValidationError, match="true inside Kubernetes"):
            SeedSettings()
    monkeypatch.setenv("CONVEYOR_MAIL_ALLOWED_DOMAINS", "example.com")
    with pytest.raises(ValidationError, match="true inside Kubernetes"):
        SeedSettings()  # even with an allowlist: development has no place in a pod
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT")
    assert SeedSettings().mail.allows("a@example.com")


async def test_a_summary_mail_that_slipped_past_the_upload_is_refused_by_its_job(
    smtp: SmtpServer, redis: ArqRedis, tmp_path: Path
) -> None:
    """An address stored before the domain was dropped from the list: the
    email_user job dies at once (permanent), sending nothing."""
    documents = DocumentStore(
        redis, BlobStore.from_settings(BlobSettings(url=f"file://{tmp_path}/blobs"))
    )
    await documents.create(
        "d1",
        name="a.txt",
        content_type="text/plain",
        content=b"text",
        notify_email="a@elsewhere.example",
        retention_s=60,
    )
    assert await documents.mark_processed("d1", text="text", summary="s")
    flow = Workflow(documents, mailer_for(smtp, redis), cast(Any, None), SeedSettings())
    store = JobStore(redis)
    ctx = JobContext("j1", 1, EMAIL_USER, store, store.catalog, resources={WORKFLOW.name: flow})
    with pytest.raises(RecipientNotAllowedError):
        await email_user(ctx, DocumentRef(document_id="d1"))
    assert smtp.received == []
