"""What the workflow jobs (documents, mail, digest) share, opened once per worker."""

from dataclasses import dataclass

import aiohttp
from arq.connections import ArqRedis

from conveyor_core.documents import DocumentStore
from conveyor_core.settings import CronSettings, DocumentSettings
from conveyor_worker.mail import Mailer
from conveyor_worker.settings import Settings
from conveyor_worker.summarize import Summarizer, make_summarizer


@dataclass(frozen=True, slots=True)
class Workflow:
    documents: DocumentStore
    document_settings: DocumentSettings
    mailer: Mailer
    summarizer: Summarizer
    cron: CronSettings


def open_workflow(settings: Settings, redis: ArqRedis, http: aiohttp.ClientSession) -> Workflow:
    return Workflow(
        documents=DocumentStore(redis),
        document_settings=settings.documents,
        mailer=Mailer(settings.smtp, redis),
        summarizer=make_summarizer(settings.summarizer, http),
        cron=settings.cron,
    )
