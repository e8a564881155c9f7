"""The log connection's NOSCRIPT re-send, as a pure unit: replies fed to the protocol by
hand (a real Redis cannot be made to run a command behind a refused one on cue; the
integration test in ``test_wal_group_commit`` flushes a real one). What is written
again, when, in which order, which replies are dropped, and when the connection gives
up instead, having written nothing again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from aqnode.wal.resp import MAX_RESENDS, Replies, _command, _loads, _ReplyProtocol, script_sha

BODY = "return 1 -- test"
SHA = script_sha(BODY)
LOADS = _loads([BODY])
LOAD_BYTES = b"".join(command for command, _ in LOADS)
LOADED = b"+OK\r\n+QUEUED\r\n*1\r\n$40\r\n" + SHA.encode() + b"\r\n"  # MULTI, LOAD, EXEC
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
    protocol = _ReplyProtocol(conn, lambda _p, moved: lost.append(moved), LOADS)
    return protocol, conn._writer.transport, lost


def _evalsha(tag: str) -> bytes:
    return _command(("EVALSHA", SHA, 0, tag))


def _run(body: Callable[[], None]) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


def test_the_scripts_load_in_one_transaction_ahead_of_everything() -> None:
    def body() -> None:
        protocol, transport, _ = _protocol()
        heard: list[Replies] = []
        protocol.load_scripts()
        protocol.write([_evalsha("a1")], heard.append)
        assert transport.written == [LOAD_BYTES, _evalsha("a1")]
        assert LOAD_BYTES.startswith(b"*1\r\n$5\r\nMULTI\r\n")
        assert LOAD_BYTES.endswith(b"*1\r\n$4\r\nEXEC\r\n")
        protocol.data_received(LOADED + b":1\r\n")
        assert heard == [[1]] and not protocol.owed

    _run(body)


def test_noscript_writes_again_in_order_once_every_later_first_copy_was_refused() -> None:
    def body() -> None:
        protocol, transport, lost = _protocol()
        heard: list[tuple[str, Replies]] = []
        protocol.load_scripts()
        protocol.write([_evalsha("a1"), _evalsha("a2")], lambda r: heard.append(("a", r)))
        protocol.write([_evalsha("b1")], lambda r: heard.append(("b", r)))

        # loaded, a1 ran; the cache was flushed before a2: only the load goes out now
        protocol.data_received(LOADED + b":1\r\n" + NOSCRIPT)
        assert transport.written[-1] == LOAD_BYTES
        protocol.write([_evalsha("c1")], lambda r: heard.append(("c", r)))  # held
        protocol.data_received(NOSCRIPT)  # b1's first copy: refused too
        assert transport.written[-1] == LOAD_BYTES and heard == []
        # the scripts are back: a2, b1 and then c1 go, in that order
        protocol.data_received(LOADED)
        assert transport.written[-1] == _evalsha("a2") + _evalsha("b1") + _evalsha("c1")
        protocol.data_received(b":2\r\n:3\r\n:4\r\n")
        assert heard == [("a", [1, 2]), ("b", [3]), ("c", [4])]
        assert not protocol.owed and not lost

    _run(body)


def test_a_command_behind_a_refused_one_that_ran_ends_the_connection_and_nothing_goes_again() -> (
    None
):
    """Nothing may run twice or out of order: if a command written after the refused one
    ran all the same (its script loaded meanwhile), writing them again would run the
    refused one after it and the other one twice. The connection ends instead, every
    batch owed is told, and nothing was written again."""

    def body() -> None:
        protocol, transport, lost = _protocol()
        heard: list[tuple[str, Replies]] = []
        protocol.write([_evalsha("a1")], lambda r: heard.append(("a", r)))
        protocol.write([_evalsha("b1")], lambda r: heard.append(("b", r)))
        protocol.data_received(NOSCRIPT)  # a1 refused
        protocol.write([_evalsha("c1")], lambda r: heard.append(("c", r)))  # held
        protocol.data_received(b":7\r\n")  # but b1 ran
        assert [name for name, _ in heard] == ["a", "b", "c"]
        assert all(isinstance(r, Exception) for _, r in heard)
        assert "nothing is written again" in str(heard[0][1])
        assert transport.written == [_evalsha("a1"), _evalsha("b1"), LOAD_BYTES]
        assert protocol.closed and transport.closing and lost == [False]

    _run(body)


def test_a_redis_that_keeps_losing_the_scripts_ends_the_connection() -> None:
    def body() -> None:
        protocol, _, _ = _protocol()
        heard: list[Replies] = []
        protocol.write([_evalsha("a1")], heard.append)
        for _ in range(MAX_RESENDS):
            protocol.data_received(NOSCRIPT + LOADED)  # refused, loaded, written again
            assert not protocol.closed
        protocol.data_received(NOSCRIPT)
        assert protocol.closed and len(heard) == 1 and isinstance(heard[0], ConnectionError)

    _run(body)


@pytest.mark.parametrize(
    "answer",
    [
        b"-ERR MULTI calls can not be nested\r\n",
        b"+OK\r\n-ERR no scripts today\r\n",
        b"+OK\r\n+QUEUED\r\n*1\r\n$3\r\nabc\r\n",
    ],
)
def test_a_load_answered_otherwise_ends_the_connection(answer: bytes) -> None:
    def body() -> None:
        protocol, _, _ = _protocol()
        heard: list[Replies] = []
        protocol.load_scripts()
        protocol.write([_evalsha("a1")], heard.append)
        protocol.data_received(answer)
        assert protocol.closed and len(heard) == 1 and isinstance(heard[0], Exception)

    _run(body)


def test_an_empty_batch_is_answered_at_once() -> None:
    def body() -> None:
        protocol, transport, _ = _protocol()
        heard: list[Replies] = []
        protocol.write([], heard.append)
        assert heard == [[]] and transport.written == [] and not protocol.owed

    _run(body)


def test_a_redis_that_stops_answering_while_the_scripts_load_again_fails_every_batch_once() -> None:
    """Redis freezes after a NOSCRIPT, with the load owed, a first copy owed and a new
    batch held: at the socket time-out every batch (the held one too) hears it, once,
    and nothing was written again."""

    async def main() -> None:
        conn = _Conn()
        conn.socket_timeout = 0.05  # type: ignore[misc]
        protocol = _ReplyProtocol(conn, lambda _p, _moved: None, LOADS)
        transport = conn._writer.transport
        heard: list[tuple[str, Replies]] = []
        protocol.write([_evalsha("a1")], lambda r: heard.append(("a", r)))
        protocol.write([_evalsha("b1")], lambda r: heard.append(("b", r)))
        protocol.data_received(NOSCRIPT)  # a1 refused: the load goes out, b1's copy owed
        protocol.write([_evalsha("c1")], lambda r: heard.append(("c", r)))  # held
        deadline = asyncio.get_running_loop().time() + 5.0
        while not protocol.closed:
            assert asyncio.get_running_loop().time() < deadline, "no time-out"
            await asyncio.sleep(0.01)
        assert [name for name, _ in heard] == ["a", "b", "c"]
        assert all(isinstance(r, TimeoutError) for _, r in heard)
        assert transport.written == [_evalsha("a1"), _evalsha("b1"), LOAD_BYTES]
        assert not protocol.owed

    asyncio.run(main())
