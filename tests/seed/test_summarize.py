"""Summarizers: the built-in extractive one, and the chat api against a real HTTP server."""

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from pydantic import SecretStr

from conveyor_core.catalog import PermanentJobError
from conveyor_seed.settings import SummarizerSettings
from conveyor_seed.summarize import (
    SUMMARY_MAX_CHARS,
    ChatSummarizer,
    ExtractiveSummarizer,
    extractive_summary,
    make_summarizer,
)
from tests.support.chat import SUMMARY_PREFIX, ChatServer

TEXT = (
    "Redis stores the queues of the job platform. "
    "The job platform retries failed jobs with backoff. "
    "Bananas are yellow. "
    "Workers of the job platform take jobs from Redis queues."
)


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def test_extractive_keeps_the_central_sentences_in_order() -> None:
    summary = extractive_summary(TEXT, max_sentences=2)
    assert "Bananas" not in summary
    assert summary.startswith("Redis stores")
    assert summary.endswith("Redis queues.")


def test_extractive_keeps_a_short_text_whole_and_bounds_a_long_one() -> None:
    assert extractive_summary("One sentence.\n\nTwo.", 5) == "One sentence. Two."
    assert extractive_summary("", 5) == ""
    long = "word " * 5000 + "."
    assert len(extractive_summary(long, 1)) <= SUMMARY_MAX_CHARS + 2


async def test_chat_summarizer_speaks_the_chat_completions_api(
    chat: ChatServer, http: aiohttp.ClientSession
) -> None:
    settings = SummarizerSettings(
        url=chat.url, model="tiny", api_key=SecretStr("k-123"), max_input_chars=1000
    )
    summarizer = make_summarizer(settings, http)
    assert isinstance(summarizer, ChatSummarizer)
    summary = await summarizer.summarize("word " * 2000)
    assert summary == f"{SUMMARY_PREFIX} 200 words by tiny."  # input cut to 1000 chars
    request = chat.requests[0]
    assert request["model"] == "tiny"
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert chat.headers[0]["Authorization"] == "Bearer k-123"


@pytest.mark.parametrize(("status", "permanent"), [(401, True), (400, True), (503, False)])
async def test_chat_errors_are_permanent_or_retried(
    chat: ChatServer, http: aiohttp.ClientSession, status: int, permanent: bool
) -> None:
    chat.status = status
    summarizer = ChatSummarizer(SummarizerSettings(url=chat.url, model="m"), http)
    error = PermanentJobError if permanent else aiohttp.ClientResponseError
    with pytest.raises(error):
        await summarizer.summarize("text")


def test_without_a_url_the_summarizer_is_built_in() -> None:
    summarizer = make_summarizer(SummarizerSettings(), None)  # type: ignore[arg-type]
    assert isinstance(summarizer, ExtractiveSummarizer)
