"""arq's wire format in JSON: exact round trips, pickles refused, errors as exceptions."""

import asyncio
import pickle
from typing import Any

import pytest
from arq.jobs import SerializationError, deserialize_job_raw, serialize_job

from conveyor_core.serializer import JobFailedError, job_deserializer, job_serializer


@pytest.mark.parametrize(
    "value",
    [
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        2**53 + 1,
        0.1,
        1 / 3,
        1e308,
        5e-324,
        -0.0,
        "é\u2028\x00",
        [],
        {},
    ],
)
def test_numbers_and_text_round_trip_exactly(value: Any) -> None:
    back = job_deserializer(job_serializer({"k": {"v": value}}))["k"]["v"]
    assert back == value
    assert type(back) is type(value)


def test_arqs_own_job_format_round_trips() -> None:
    raw = serialize_job("f", (1,), {"a": [1, 2]}, None, 1733380000123, serializer=job_serializer)
    assert raw.startswith(b'{"t":null,"f":"f"')
    decoded: tuple[Any, ...] = deserialize_job_raw(raw, deserializer=job_deserializer)
    assert decoded == (
        "f",
        [1],
        {"a": [1, 2]},
        None,
        1733380000123,
    )


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", {1: "int key"}, 2**64, object()])
def test_what_json_cannot_hold_is_refused_not_changed(value: Any) -> None:
    with pytest.raises(SerializationError, match="must be JSON"):
        job_serializer({"k": {"v": value}})


def test_a_pickle_is_refused_and_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("unpickled",))

    for raw in [pickle.dumps({"f": "x", "k": {"b": Boom()}}), b"\x80\x05garbage", b"not json"]:
        with pytest.raises(SerializationError, match="not JSON"):
            job_deserializer(raw)


def test_a_failed_result_holds_its_exception_again() -> None:
    def error_of(r: Any) -> Any:
        return job_deserializer(job_serializer({"s": False, "r": r}))["r"]

    value_error = error_of(ValueError("bad input"))
    assert type(value_error) is ValueError
    assert str(value_error) == "bad input"
    assert type(error_of(asyncio.CancelledError())) is asyncio.CancelledError
    custom = error_of({"type": "PaymentDeclined", "message": "card expired", "traceback": "..."})
    assert isinstance(custom, JobFailedError)
    assert (custom.type_name, custom.message) == ("PaymentDeclined", "card expired")
    # Never an exception that would stop the reader.
    assert isinstance(error_of({"type": "SystemExit", "message": "1"}), JobFailedError)
    # A success's result is the value, even when it looks like an error.
    ok = {"s": True, "r": {"type": "ValueError", "message": "x"}}
    assert job_deserializer(job_serializer(ok))["r"] == ok["r"]


def test_a_result_python_wrote_with_nan_still_reads() -> None:
    data = job_deserializer(b'{"s":true,"r":[NaN,Infinity,1]}')
    assert data["r"][1:] == [float("inf"), 1]
