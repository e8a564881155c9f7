"""The log's reply parser (aqnode.wal.resp_parse): every RESP2/RESP3 reply type, replies
cut at every byte, error replies as redis-py's exception classes, push messages dropped,
and bytes that are not RESP refused."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as redis_exc

from aqnode.wal.resp_parse import ReplyParser, ReplyProtocolError

WIRE = (
    b"*3\r\n:7\r\n$5\r\nhello\r\n$-1\r\n"  # an array of an int, a string, a RESP2 null
    b"+OK\r\n"
    b":-12\r\n"
    b"$0\r\n\r\n"
    b"$6\r\na\r\nb\x00\xff\r\n"  # CRLF and non-UTF-8 inside a bulk string
    b"*0\r\n"
    b"*-1\r\n"
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    b"-MOVED 3999 127.0.0.1:6381\r\n"
    b"-ERR user_script:1: oops\r\n"
    b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"  # a push: not a reply
    b"_\r\n"
    b"#t\r\n"
    b",1.5\r\n"
    b"(123456789012345678901234567890\r\n"
    b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n"
    b"~2\r\n:1\r\n:2\r\n"
    b"=8\r\ntxt:some\r\n"
    b"|1\r\n+ttl\r\n:3\r\n:99\r\n"  # an attribute, then the reply it annotates
    b"!5\r\nERR x\r\n"
)


def _check(replies: list[Any]) -> None:
    assert replies[:7] == [[7, b"hello", None], b"OK", -12, b"", b"a\r\nb\x00\xff", [], None]
    assert isinstance(replies[7], redis_exc.NoScriptError)
    assert isinstance(replies[8], redis_exc.MovedError)
    assert isinstance(replies[9], redis_exc.ResponseError)
    assert "oops" in str(replies[9])
    assert replies[10:17] == [
        None,
        True,
        1.5,
        123456789012345678901234567890,
        {b"a": 1, b"b": [2]},
        [1, 2],
        b"some",
    ]
    assert replies[17] == 99
    assert isinstance(replies[18], redis_exc.ResponseError)
    assert len(replies) == 19


def test_every_reply_type_in_one_read() -> None:
    parser = ReplyParser()
    _check(parser.feed(WIRE))
    assert parser.buffered == 0


def test_replies_cut_at_every_byte_come_out_the_same() -> None:
    for cut in range(1, len(WIRE)):
        parser = ReplyParser()
        replies = parser.feed(WIRE[:cut]) + parser.feed(WIRE[cut:])
        _check(replies)
        assert parser.buffered == 0


def test_one_byte_at_a_time() -> None:
    parser = ReplyParser()
    replies: list[Any] = []
    for i in range(len(WIRE)):
        replies += parser.feed(WIRE[i : i + 1])
    _check(replies)


def test_an_unfinished_reply_stays_buffered() -> None:
    parser = ReplyParser()
    assert parser.feed(b"*2\r\n:1\r\n") == []
    assert parser.buffered == 8
    assert parser.feed(b":2\r\n") == [[1, 2]]


@pytest.mark.parametrize("garbage", [b"?what\r\n", b"HTTP/1.1 400\r\n", b"\x00\r\n"])
def test_bytes_that_are_not_resp_are_refused(garbage: bytes) -> None:
    with pytest.raises(ReplyProtocolError):
        ReplyParser().feed(garbage)


def test_a_huge_bulk_string_arriving_in_pieces() -> None:
    body = b"x" * 1_000_000
    wire = b"$%d\r\n" % len(body) + body + b"\r\n"
    parser = ReplyParser()
    replies: list[Any] = []
    for start in range(0, len(wire), 65536):
        replies += parser.feed(wire[start : start + 65536])
    assert replies == [body]
