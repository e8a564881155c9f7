"""The error tree (aqnode.errors): codes, str(), and the to_dict/from_dict round trip."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from aqnode import errors
from aqnode.errors import (
    AqError,
    BackpressureError,
    Draining,
    HandlerError,
    Interrupted,
    RedisUnavailable,
    ReplyTimeout,
    SelfWait,
    ValidationFailed,
)

ALL_CODES = sorted(
    value
    for name, value in vars(errors).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, str)
)


def _msgpack(data: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(msgspec.msgpack.encode(data))
    return decoded


def _json(data: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(json.dumps(data))
    return decoded


def _same(data: dict[str, Any]) -> dict[str, Any]:
    return data


WIRES = [
    pytest.param(_same, id="as-is"),
    pytest.param(_msgpack, id="msgpack"),
    pytest.param(_json, id="json"),
]


def test_the_code_table_covers_the_codes_it_should() -> None:
    assert "HANDLER_ERROR" in ALL_CODES and "INTERNAL" in ALL_CODES
    assert set(errors._BY_CODE) <= set(ALL_CODES)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(("code", "cls"), sorted(errors._BY_CODE.items()))
def test_every_known_code_comes_back_as_its_most_specific_class(
    code: str, cls: type[AqError], wire: Any
) -> None:
    if cls is HandlerError:
        original: AqError = HandlerError("it broke", remote_type="KeyError")
    else:
        original = cls("it went wrong", code=code, entity_id="o-1", attempt=3)
    back = AqError.from_dict(wire(original.to_dict()))
    assert type(back) is cls
    assert back.code == code
    assert back.message == original.message
    assert back.details == original.details
    assert back.to_dict() == original.to_dict()


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (AqError, "INTERNAL"),
        (HandlerError, "HANDLER_ERROR"),
        (ValidationFailed, "INVALID_PAYLOAD"),
        (BackpressureError, "QUEUE_DEPTH_EXCEEDED"),
        (RedisUnavailable, "REDIS_UNAVAILABLE"),
        (ReplyTimeout, "REPLY_TIMEOUT"),
        (Interrupted, "INTERRUPTED"),
        (SelfWait, "SELF_WAIT"),
        (Draining, "DRAINING"),
    ],
)
def test_each_class_has_its_default_code(cls: type[AqError], code: str) -> None:
    assert cls("x").code == code
    assert type(AqError.from_dict(cls("x").to_dict())) is cls


@pytest.mark.parametrize("wire", WIRES)
def test_details_survive_the_round_trip(wire: Any) -> None:
    details = {
        "field": "amount",
        "limit": 1000,
        "ratio": 0.5,
        "flags": [1, "two", None],
        "nested": {"a": {"b": True}},
        "text": "é\r\n🙂",
    }
    original = ValidationFailed("bad amount", code="INVALID_PAYLOAD", **details)
    back = AqError.from_dict(wire(original.to_dict()))
    assert back.details == details
    assert back.to_dict() == {"code": "INVALID_PAYLOAD", "message": "bad amount", **details}


@pytest.mark.parametrize("wire", WIRES)
def test_a_handler_error_keeps_the_remote_type_message_and_traceback(wire: Any) -> None:
    tb = 'Traceback (most recent call last):\n  File "h.py", line 3\nValueError: nope\n'
    original = HandlerError(
        "Order.Pay raised ValueError",
        remote_type="builtins.ValueError",
        remote_message="nope",
        remote_traceback=tb,
    )
    back = AqError.from_dict(wire(original.to_dict()))
    assert isinstance(back, HandlerError)
    assert back.code == "HANDLER_ERROR"
    assert back.message == "Order.Pay raised ValueError"
    assert (back.remote_type, back.remote_message, back.remote_traceback) == (
        "builtins.ValueError",
        "nope",
        tb,
    )
    assert back.details == {
        "remote_type": "builtins.ValueError",
        "remote_message": "nope",
        "remote_traceback": tb,
    }


def test_a_handler_error_dict_without_remote_fields_gets_empty_ones() -> None:
    back = AqError.from_dict({"code": "HANDLER_ERROR", "message": "m"})
    assert isinstance(back, HandlerError)
    assert (back.remote_type, back.remote_message, back.remote_traceback) == ("", "", "")


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    "code", [c for c in ALL_CODES if c not in errors._BY_CODE] + ["SOMETHING_NEW"]
)
def test_a_code_without_a_class_comes_back_as_a_plain_aq_error_with_that_code(
    code: str, wire: Any
) -> None:
    original = AqError("from elsewhere", code=code, hops=4)
    back = AqError.from_dict(wire(original.to_dict()))
    assert type(back) is AqError
    assert back.code == code
    assert back.message == "from elsewhere"
    assert back.details == {"hops": 4}


def test_a_dict_without_code_or_message_is_internal_with_an_empty_message() -> None:
    back = AqError.from_dict({"reason": "?"})
    assert type(back) is AqError
    assert (back.code, back.message, back.details) == ("INTERNAL", "", {"reason": "?"})


def test_from_dict_leaves_its_argument_alone() -> None:
    data = {"code": "DRAINING", "message": "bye", "extra": 1}
    AqError.from_dict(data)
    assert data == {"code": "DRAINING", "message": "bye", "extra": 1}


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (AqError("node bug"), "INTERNAL: node bug"),
        (Draining("shutting down"), "DRAINING: shutting down"),
        (
            BackpressureError("too many", code="WORKER_LIMIT_EXCEEDED"),
            "WORKER_LIMIT_EXCEEDED: too many",
        ),
        (HandlerError("raised", remote_type="X"), "HANDLER_ERROR: raised"),
        (AqError("m", code="SOMETHING_NEW", x=1), "SOMETHING_NEW: m"),
    ],
)
def test_str_is_code_colon_message(error: AqError, text: str) -> None:
    assert str(error) == text


def test_str_survives_the_round_trip() -> None:
    original = ReplyTimeout("no reply in 5s", waited_ms=5000)
    assert str(AqError.from_dict(_msgpack(original.to_dict()))) == "REPLY_TIMEOUT: no reply in 5s"


def test_every_error_is_an_exception_that_can_be_raised_and_caught_as_aq_error() -> None:
    with pytest.raises(AqError) as caught:
        raise AqError.from_dict({"code": "SELF_WAIT", "message": "waits on itself"})
    assert isinstance(caught.value, SelfWait)
    assert caught.value.args == ("waits on itself",)


def test_every_exception_aqnode_raises_on_purpose_shares_one_root() -> None:
    from aqnode import ipc

    for cls in (AqError, HandlerError, errors.StartupError, ipc.ProtocolError):
        assert issubclass(cls, errors.AqnodeError), cls
    assert issubclass(ipc.TruncatedFrame, ipc.ProtocolError)


def test_node_failures_are_not_client_errors_and_print_without_a_code() -> None:
    from aqnode import ipc

    assert not issubclass(errors.StartupError, AqError)
    assert not issubclass(ipc.ProtocolError, AqError)
    assert str(errors.StartupError("cannot listen")) == "cannot listen"
