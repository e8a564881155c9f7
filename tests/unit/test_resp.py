"""RESP packing of commands (aqnode.wal.resp.pack), byte for byte and against redis-py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from redis._parsers import _AsyncRESP2Parser
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from aqnode.wal.resp import pack


def packed(*args: Any) -> bytes:
    return b"".join(pack(args))


def test_str_arguments_are_bulk_strings_of_their_utf8_bytes() -> None:
    assert packed("SET", "k", "value") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"


def test_a_non_ascii_str_is_counted_in_bytes_not_characters() -> None:
    assert packed("é🙂") == b"*1\r\n$6\r\n\xc3\xa9\xf0\x9f\x99\x82\r\n"


def test_bytes_are_sent_as_they_are() -> None:
    assert packed(b"GET", b"key") == b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"


def test_bytes_with_crlf_and_non_utf8_inside_are_length_prefixed_verbatim() -> None:
    value = b"a\r\nb\xff\xfe\x00\r\n"  # 9 bytes, not valid UTF-8
    assert packed(b"SET", b"k", value) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9\r\na\r\nb\xff\xfe\x00\r\n\r\n"
    )
    assert packed(b"\r\n") == b"*1\r\n$2\r\n\r\n\r\n"


@pytest.mark.parametrize(
    ("number", "wire"),
    [
        (0, b"$1\r\n0\r\n"),
        (7, b"$1\r\n7\r\n"),
        (-1, b"$2\r\n-1\r\n"),
        (-12345, b"$6\r\n-12345\r\n"),
        (2**63 - 1, b"$19\r\n9223372036854775807\r\n"),
        (-(2**63), b"$20\r\n-9223372036854775808\r\n"),
    ],
)
def test_ints_are_bulk_strings_of_their_decimal_digits(number: int, wire: bytes) -> None:
    assert packed(number) == b"*1\r\n" + wire


def test_empty_arguments_are_zero_length_bulk_strings() -> None:
    assert packed("") == b"*1\r\n$0\r\n\r\n"
    assert packed(b"", "", b"x") == b"*3\r\n$0\r\n\r\n$0\r\n\r\n$1\r\nx\r\n"


def test_no_arguments_is_an_empty_array() -> None:
    assert pack([]) == [b"*0\r\n"]


def test_pack_returns_parts_that_join_into_one_command() -> None:
    parts = pack(["XADD", b"s", 1])
    assert all(isinstance(p, bytes) for p in parts)
    assert parts == [
        b"*3\r\n",
        *(b"$4\r\n", b"XADD", b"\r\n"),
        *(b"$1\r\n", b"s", b"\r\n"),
        *(b"$1\r\n", b"1", b"\r\n"),
    ]


def test_a_tuple_of_arguments_packs_like_a_list() -> None:
    assert b"".join(pack(("HSET", "h", "f", 3))) == b"".join(pack(["HSET", "h", "f", 3]))


def test_a_large_argument_keeps_its_exact_length() -> None:
    big = bytes(range(256)) * 400  # 100 KiB, every byte value
    assert packed(b"SET", b"k", big) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$102400\r\n" + big + b"\r\n"
    )


# ---- against redis-py ----------------------------------------------------------------

COMMANDS: list[list[Any]] = [
    ["SET", "k", "v"],
    ["EVALSHA", "0123abcd", 2, "key:1", b"key:2", -5, 0, ""],
    [b"XADD", b"log", b"*", b"payload", b"\r\n\xff\x00\r\n"],
    ["HSET", "h:é", "f", "🙂 \r\n", b"", 2**40],
    ["PING"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_bytes_match_redis_pys_own_packing(command: list[Any]) -> None:
    encoder = Encoder("utf-8", "strict", False)
    theirs = PythonRespSerializer(6000, encoder.encode).pack(*command)
    assert packed(*command) == b"".join(theirs)


def test_redis_pys_parser_reads_back_every_argument() -> None:
    async def parse_all(data: bytes, count: int) -> list[Any]:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        parser = _AsyncRESP2Parser(socket_read_size=65536)
        parser.on_connect(
            SimpleNamespace(_reader=stream, encoder=Encoder("utf-8", "strict", False))
        )
        return [await parser.read_response() for _ in range(count)]

    # several commands back to back, as PipelinedConnection.send writes them
    data = b"".join(b"".join(pack(c)) for c in COMMANDS)
    parsed = asyncio.run(parse_all(data, len(COMMANDS)))

    def as_bytes(arg: Any) -> bytes:
        return (
            arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else arg
        )

    assert parsed == [[as_bytes(a) for a in c] for c in COMMANDS]
