"""What the seed's jobs share, opened once per worker process: mail, documents,
the summarizer (and the HTTP client it uses), and the seed's settings.

The api imports this module (the job module declares the resource) but never
opens it, so the mail and HTTP clients are imported only when it opens: the
api's image does without them (the `worker` extra of conveyor-seed).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor_core import Resource, ResourceScope
from conveyor_core.blobs import BlobStore
from conveyor_seed.documents import DocumentStore
from conveyor_seed.settings import SeedSettings

if TYPE_CHECKING:
    from conveyor_seed.mail import Mailer
    from conveyor_seed.summarize import Summarizer

# A summarizer call, or any other outgoing request, that takes longer is cut.
HTTP_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class Workflow:
    documents: DocumentStore
    mailer: "Mailer"
    summarizer: "Summarizer"
    settings: SeedSettings


@asynccontextmanager
async def open_workflow(scope: ResourceScope) -> AsyncIterator[Workflow]:
    # Worker-only dependencies (conveyor-seed[worker]), imported where they are used.
    import aiohttp

    from conveyor_seed.mail import Mailer
    from conveyor_seed.summarize import make_summarizer

    settings = SeedSettings()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:
        yield Workflow(
            documents=DocumentStore(scope.redis, BlobStore.open(settings.blobs)),
            mailer=Mailer(settings.smtp, scope.redis, settings.mail),
            summarizer=make_summarizer(settings.summarizer, http),
            settings=settings,
        )


WORKFLOW = Resource("seed_workflow", open_workflow, "mail, documents and the summarizer")
