"""What the sending API checks before anything is sent: a wait's ``timeout=``, and a
reply that does not decode as ``R`` on the caller's side."""

from __future__ import annotations

import math

import msgspec
import pytest

from aqnode import Command, entity_type
from aqnode.bus import MAX_TIMEOUT_S, SendResult, timeout_ms_of, typed_decode
from aqnode.errors import HandlerError, ValidationFailed


class Point(msgspec.Struct):
    x: int


@entity_type("shape", id_field="key")
class Make(Command[Point]):
    key: str


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, 0), (0.0001, 1), (1.5, 1500), (MAX_TIMEOUT_S, MAX_TIMEOUT_S * 1000)],
)
def test_a_timeout_in_range_becomes_milliseconds(timeout: float | None, expected: int) -> None:
    assert timeout_ms_of(timeout) == expected


@pytest.mark.parametrize(
    "timeout", [0, -1, -0.5, math.nan, math.inf, 1e30, MAX_TIMEOUT_S + 1, True, "2"]
)
def test_a_timeout_out_of_range_is_invalid_payload(timeout: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        timeout_ms_of(timeout)  # type: ignore[arg-type]
    assert caught.value.code == "INVALID_PAYLOAD"
    assert caught.value.details["field"] == "timeout"
    assert "nothing was sent" in caught.value.message


def test_a_reply_that_is_not_r_reaches_a_typed_caller_as_handler_error() -> None:
    bad = SendResult("m-1", True, msgspec.msgpack.encode({"x": "not an int"}))
    with pytest.raises(HandlerError) as caught:
        typed_decode(Make(key="k"), bad)
    assert caught.value.code == "HANDLER_ERROR"
    assert "Point" in caught.value.message and "m-1" in caught.value.message
    good = SendResult("m-2", True, msgspec.msgpack.encode({"x": 3}))
    assert typed_decode(Make(key="k"), good) == Point(3)
