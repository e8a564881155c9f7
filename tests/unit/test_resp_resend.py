"""The log connection's NOSCRIPT re-send, as a pure unit: replies fed to the protocol by
hand (a real Redis cannot be made to run a re-sent command's first copy on cue; the
integration test ``test_wal_group_commit`` flushes a real one). What is re-sent, in which
order, which replies are dropped, and when the connection gives up instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aqnode.wal.resp import MAX_RESENDS, Replies, _command, _ReplyProtocol, script_sha

BODY = "return 1 -- test"
SHA = script_sha(BODY)
LOAD = _command(("SCRIPT", "LOAD", BODY))
NOSCRIPT = b"-NOSCRIPT No matching script. Please use EVAL.\r\n"


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.protocol: Any = None
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class _Conn:
    socket_timeout = None

    def __init__(self) -> None:
        self._writer = type("W", (), {"transport": _Transport()})()


def _protocol() -> tuple[_ReplyProtocol, _Transport, list[bool]]:
    conn = _Conn()
    lost: list[bool] = []
    protocol = _ReplyProtocol(conn, lambda _p, moved: lost.append(moved), [(LOAD, SHA)])
    return protocol, conn._writer.transport, lost


def _evalsha(tag: str) -> bytes:
    return _command(("EVALSHA", SHA, 0, tag))


def _run(body: Any) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


def test_noscript_resends_the_refused_command_and_everything_after_it_in_order() -> None:
    def body() -> None:
        protocol, transport, lost = _protocol()
        heard: list[tuple[str, Replies]] = []
        protocol.load_scripts()
        protocol.write([_evalsha("a1"), _evalsha("a2")], lambda r: heard.append(("a", r)))
        protocol.write([_evalsha("b1")], lambda r: heard.append(("b", r)))
        assert transport.written == [LOAD, _evalsha("a1") + _evalsha("a2"), _evalsha("b1")]

        # the load and a1 went through; the cache was flushed before a2
        protocol.data_received(b"$40\r\n" + SHA.encode() + b"\r\n:1\r\n" + NOSCRIPT)
        assert transport.written[-1] == LOAD + _evalsha("a2") + _evalsha("b1")
        assert heard == []
        # b1's first copy is refused too, then the new load, then the copies run
        protocol.data_received(NOSCRIPT + b"$40\r\n" + SHA.encode() + b"\r\n:2\r\n")
        assert heard == [("a", [1, 2])]
        protocol.data_received(b":3\r\n")
        assert heard == [("a", [1, 2]), ("b", [3])] and not protocol.owed and not lost

    _run(body)


def test_a_first_copy_that_ran_after_all_ends_the_connection() -> None:
    """Nothing may run twice or out of order: if a command written after the refused one
    was not refused itself (someone loaded the script in between), re-sending would run
    the refused one after it. The connection is ended instead, every batch owed told."""

    def body() -> None:
        protocol, transport, lost = _protocol()
        heard: list[tuple[str, Replies]] = []
        protocol.write([_evalsha("a1")], lambda r: heard.append(("a", r)))
        protocol.write([_evalsha("b1")], lambda r: heard.append(("b", r)))
        protocol.data_received(NOSCRIPT)  # a1 refused: a1 and b1 re-sent
        protocol.data_received(b":7\r\n")  # but b1's first copy ran
        assert [name for name, _ in heard] == ["a", "b"]
        assert all(isinstance(r, Exception) for _, r in heard)
        assert "had run after all" in str(heard[0][1])
        assert protocol.closed and transport.closing and lost == [False]

    _run(body)


def test_a_redis_that_keeps_losing_the_scripts_ends_the_connection() -> None:
    def body() -> None:
        protocol, _, _ = _protocol()
        heard: list[Replies] = []
        protocol.write([_evalsha("a1")], heard.append)
        for _ in range(MAX_RESENDS):
            protocol.data_received(NOSCRIPT + b"$40\r\n" + SHA.encode() + b"\r\n")
            assert not protocol.closed
        protocol.data_received(NOSCRIPT)
        assert protocol.closed and len(heard) == 1 and isinstance(heard[0], ConnectionError)

    _run(body)


@pytest.mark.parametrize("answer", [b"$3\r\nabc\r\n", b"-ERR no scripts today\r\n"])
def test_a_script_load_answered_otherwise_ends_the_connection(answer: bytes) -> None:
    def body() -> None:
        protocol, _, _ = _protocol()
        heard: list[Replies] = []
        protocol.load_scripts()
        protocol.write([_evalsha("a1")], heard.append)
        protocol.data_received(answer)
        assert protocol.closed and len(heard) == 1 and isinstance(heard[0], Exception)

    _run(body)
