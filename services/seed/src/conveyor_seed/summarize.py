"""Summaries of document text: a built-in extractive one, or an OpenAI-compatible chat api.

The built-in summarizer needs no network and no model: it keeps the
sentences whose words are most frequent in the whole text (Luhn's method),
in their original order.
"""

import asyncio
import re
from collections import Counter
from typing import Any, Protocol

import aiohttp

from conveyor_core import PermanentJobError
from conveyor_seed.settings import SummarizerSettings

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)
# Words too common to say what a text is about.
_STOPWORDS_TEXT = """a an and are as at be been but by can could did do does for from had has have
he her his how i if in into is it its may more most no not of on or our she should so such than
that the their them then there these they this those to was we were what when where which who
will with would you your also any each other some only over very just about after before"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
# A summary longer than this is cut at a word boundary.
SUMMARY_MAX_CHARS = 2000
SYSTEM_PROMPT = (
    "Summarize the user's document in at most five sentences of plain text. "
    "Say what it is about and its main points."
)


class Summarizer(Protocol):
    name: str

    async def summarize(self, text: str) -> str: ...


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars].rsplit(" ", 1)[0] + " …"


def extractive_summary(text: str, max_sentences: int) -> str:
    """The `max_sentences` sentences that score highest, in text order."""
    sentences = [" ".join(s.split()) for s in SENTENCE_END.split(text) if s.strip()]
    if len(sentences) <= max_sentences:
        return _cut(" ".join(sentences), SUMMARY_MAX_CHARS)
    frequency = Counter(
        word for word in (w.lower() for w in WORD.findall(text)) if word not in STOPWORDS
    )

    def score(sentence: str) -> float:
        words = [w.lower() for w in WORD.findall(sentence)]
        if not words:
            return 0.0
        return sum(frequency[w] for w in words if w not in STOPWORDS) / len(words)

    ranked = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))
    keep = sorted(ranked[:max_sentences])
    return _cut(" ".join(sentences[i] for i in keep), SUMMARY_MAX_CHARS)


class ExtractiveSummarizer:
    name = "extractive"

    def __init__(self, max_sentences: int) -> None:
        self.max_sentences = max_sentences

    async def summarize(self, text: str) -> str:
        # CPU work on a long text: keep the event loop (and lock renewal) free.
        return await asyncio.to_thread(extractive_summary, text, self.max_sentences)


class ChatSummarizer:
    """POSTs to `{url}/chat/completions` of an OpenAI-compatible api."""

    def __init__(self, settings: SummarizerSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.name = f"chat:{settings.model}"

    async def summarize(self, text: str) -> str:
        settings = self.settings
        body: dict[str, Any] = {
            "model": settings.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text[: settings.max_input_chars]},
            ],
        }
        headers = {}
        if key := settings.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {key}"
        url = settings.url.rstrip("/") + "/chat/completions"
        timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        async with self.http.post(url, json=body, headers=headers, timeout=timeout) as response:
            if response.status in (400, 401, 403, 404, 422):
                detail = (await response.text())[:500]
                raise PermanentJobError(
                    f"summarizer refused the request: {response.status} {detail}"
                )
            response.raise_for_status()  # 429 and 5xx: retried with backoff
            reply = await response.json()
        try:
            content: str = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"summarizer answered without a message: {str(reply)[:500]}") from exc
        return _cut(content.strip(), SUMMARY_MAX_CHARS)


def make_summarizer(settings: SummarizerSettings, http: aiohttp.ClientSession) -> Summarizer:
    if settings.url:
        return ChatSummarizer(settings, http)
    return ExtractiveSummarizer(settings.max_sentences)
