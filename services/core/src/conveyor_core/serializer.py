"""arq's wire format in JSON: job data is never pickled.

arq stores a job (`arq:job:{id}`) and its result (`arq:result:{id}`) as
whatever its `job_serializer` makes of a small dict, pickle by default: then
anyone who can write to Redis runs code in every process that reads a job.
Conveyor passes this pair instead, on both sides, and so must a bare arq
client that shares its Redis:

    from arq import create_pool
    from arq.connections import RedisSettings
    from conveyor_core.serializer import job_deserializer, job_serializer

    redis = await create_pool(
        RedisSettings(host="redis"),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )

JSON, through orjson: ints (to 64 bits) and floats round-trip exactly; a
value JSON cannot hold (a datetime, a set, bytes, an int beyond 64 bits, a
non-string key) is refused when written, never changed; a tuple is written
as a list, NaN and infinities as null (as pydantic's JSON mode writes them).
Reading refuses anything that is not JSON (a pickle, for one) with arq's
`SerializationError`.

A failed job's error travels as `{"type": ..., "message": ...}` (see
`error_object`); reading a result turns it back into an exception (see
`exception_of`), so arq's `Job.result()` raises it and `Job.abort()` sees a
cancelled job's `asyncio.CancelledError`.
"""

import asyncio
import builtins
import json
from typing import Any

import orjson
from arq.jobs import SerializationError

# The error type of a job that was cancelled (arq's name for it).
CANCELLED_ERROR_TYPE = "CancelledError"


class JobFailedError(Exception):
    """A job's error whose type is not a builtin exception: the type's name and its message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


def error_object(error: BaseException) -> dict[str, str]:
    """An exception as job data: its type's name and its message."""
    return {"type": type(error).__name__, "message": str(error)}


def exception_of(error: Any) -> Any:
    """The exception an error object stands for: asyncio.CancelledError for a
    cancelled job, a builtin exception by name (never one that stops the
    reader, as SystemExit would), else JobFailedError. Anything else is
    returned as it is."""
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return error
    name, message = error["type"], str(error.get("message", ""))
    if name == CANCELLED_ERROR_TYPE:
        return asyncio.CancelledError(message)
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            return builtin(message)
        except TypeError:  # a builtin that takes other arguments
            pass
    return JobFailedError(name, message)


# orjson would write a datetime or a dataclass (and a subclass of str, int,
# dict or list) its own way, which reads back as something else: refuse them.
# (A UUID or an Enum is written as its JSON value, as pydantic's JSON mode does.)
_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _default(value: Any) -> Any:
    # A bare arq worker stores a failed job's exception as its result.
    if isinstance(value, BaseException):
        return error_object(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def job_serializer(obj: Any) -> bytes:
    """arq's job or result dict as JSON bytes; SerializationError for what JSON cannot hold."""
    try:
        return orjson.dumps(obj, default=_default, option=_STRICT)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise SerializationError(f"job data must be JSON: {exc}") from None


def loads(raw: bytes) -> Any:
    """JSON job data as stored, with no error turned into an exception."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        # Python's own JSON also reads NaN and Infinity, which a result written
        # by json.dumps may hold; it never runs code either.
        return json.loads(raw)
    except ValueError:  # JSONDecodeError, or bytes that are not text (a pickle)
        raise SerializationError("job data is not JSON (a pickle, or damaged)") from None


def job_deserializer(raw: bytes) -> Any:
    """arq's job or result dict from JSON bytes; a failed job's result (`s`
    false) holds its exception again, as arq's own result would."""
    data = loads(raw)
    if isinstance(data, dict) and data.get("s") is False and "r" in data:
        data["r"] = exception_of(data["r"])
    return data
