"""Masking secrets before they reach logs, spans, job errors or the job api.

Two ways, both needed: by field name (`Redactor`: a payload's `password`
field, whatever it holds) and by value (`scrub`: an e-mail address, a bearer
token, a JWT, URL credentials or `password=...` inside free text such as an
error message or a traceback, whatever field carries it). `bounded` keeps
any one text small: a request body or a Redis command's arguments must never
reach a log line whole.
"""

import functools
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# A field whose name contains one of these (any case) is masked whatever it holds.
DEFAULT_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "cookie",
    "private_key",
    "email",
)
# What one text (a log field, an error message) may keep: about 1 KB.
FIELD_MAX_CHARS = 1024
# Past the cut, how much more is scrubbed with the rest: the longest secret
# (a JWT, a URL with credentials) recognized whole across the cut.
_SCRUB_MARGIN_CHARS = 512

# Names of `name=value` (or `name: value`) pairs whose value is a secret.
_MASKED_NAMES = (
    r"[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|credentials?|private[_-]?key)"
    r"|authorization|auth|cookie"
)
# Each pattern runs only on a text that holds its hint (a plain substring test):
# most texts hold none, and scrubbing runs on every log line.
_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # scheme://user:password@host: the password (the user stays, as masked_url has it).
    (("://",), re.compile(r"(?P<keep>\b[a-zA-Z][\w+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)")),
    # A JWT: three base64url parts, the first two JSON objects ("eyJ").
    (("eyj",), re.compile(r"\beyJ[\w-]{4,}\.eyJ[\w-]{4,}\.[\w-]*")),
    # password=..., "token": "...", Authorization: Bearer ... (the name stays).
    (
        ("pass", "pwd", "secret", "token", "key", "credential", "auth", "cookie"),
        re.compile(
            rf"(?P<keep>\b(?i:{_MASKED_NAMES})[\"']?\s*[=:]\s*(?i:(?:bearer|basic)\s+)?)"
            r"(?:\"[^\"]*\"|'[^']*'|[^\s,;&)\]}]+)"
        ),
    ),
    # A bearer token anywhere else (a token's length: "the bearer key" stays).
    (("earer",), re.compile(r"(?P<keep>\b[Bb]earer\s+)[\w.~+/-]{8,}=*")),
    # Conveyor's own api keys.
    (("cvk_",), re.compile(r"\bcvk_[\w-]{8,}")),
    # What pydantic's ValidationError shows of the input (`str(exc)`): the input.
    (("input_value=",), re.compile(r"(?P<keep>\binput_value=).*?(?=, input_type=|\]|$)", re.M)),
    # An e-mail address (from its @, so a long word is not tried at every letter).
    (("@",), re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
)


# Every pattern above needs one of these in the text (a pair needs its = or :).
_TRIGGERS = ("@", ":", "=", "eyJ", "earer", "cvk_")


def _mask(match: re.Match[str]) -> str:
    return (match.groupdict().get("keep") or "") + MASK


def scrub(text: str) -> str:
    """`text` with secret-looking values masked: e-mail addresses, bearer tokens,
    JWTs, Conveyor api keys, URL passwords and `password=`/`token=`/`secret=`/
    `api_key=`-style pairs. For free text: error messages, tracebacks, log lines."""
    for trigger in _TRIGGERS:
        if trigger in text:
            break
    else:  # most log messages: "job end", "request"
        return text
    lowered = text.lower()
    for hints, pattern in _PATTERNS:
        for hint in hints:  # plain loops: a generator here doubled a log line's cost
            if hint in lowered:
                text = pattern.sub(_mask, text)
                break
    return text


def bounded(text: str, max_chars: int = FIELD_MAX_CHARS) -> str:
    """`text`, or its first `max_chars` characters and a note of how many were cut."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… [{len(text) - max_chars} more characters cut]"


def clean(text: str, max_chars: int = FIELD_MAX_CHARS) -> str:
    """Scrubbed, then bounded: the form any outside text takes in a log line or an error.

    Only the part kept (and a margin, so that a secret across the cut is still
    recognized whole) is scrubbed: a huge text costs no more than a small one.
    """
    if len(text) <= max_chars:
        return scrub(text)
    kept = scrub(text[: max_chars + _SCRUB_MARGIN_CHARS])[:max_chars]
    return f"{kept}… [{len(text) - max_chars} more characters cut]"


# A minted job id: its shard's tag in braces (id characters), then 32 hex digits.
_MINTED_JOB_ID = re.compile(r"(\{[A-Za-z0-9_.:-]{1,200}\})[0-9a-f]{32}")


@functools.lru_cache(maxsize=256)
def _clean_as_it_is(text: str) -> bool:
    return clean(text) == text


def clean_job_id(job_id: str) -> str:
    """`clean(job_id)`, without scrubbing a minted id each time (a job's span
    carries its id). No pattern of `scrub` can match within 32 hex digits,
    nor run across the tag's closing brace from its id characters (no value,
    name or address takes a brace), so a minted id is clean exactly when its
    tag is, which is found once per tag."""
    minted = _MINTED_JOB_ID.fullmatch(job_id)
    if minted is not None and _clean_as_it_is(minted[1]):
        return job_id
    return clean(job_id)


def clean_traceback(text: str, max_chars: int = 4 * FIELD_MAX_CHARS) -> str:
    """A formatted traceback, each line cleaned, and the whole bounded from its
    end (the exception and its innermost frames are what matter)."""
    text = "\n".join(clean(line) for line in text.splitlines())
    if len(text) > max_chars:
        text = f"[{len(text) - max_chars} characters cut]…{text[-max_chars:]}"
    return text


def _key_form(key: str) -> str:
    return key.strip().lower().replace("-", "_")


class Redactor:
    """Masks the value of every key that contains one of `keys` (any depth; any
    case, and `-` counts as `_`: `X-Api-Key` contains `api_key`)."""

    def __init__(self, keys: Iterable[str] = DEFAULT_KEYS) -> None:
        self.keys = tuple(_key_form(k) for k in keys if k.strip())

    def is_secret(self, key: str) -> bool:
        lowered = _key_form(key)
        return any(k in lowered for k in self.keys)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and self.is_secret(k) else self(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value
