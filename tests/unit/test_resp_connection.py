"""The log's pipelined connection never leaves a commit without an answer (found by the
soak: a Redis restart while a batch was being written stranded that batch's future, and
the log's commit loop waited on it for ever, so every later enqueue hung)."""

from __future__ import annotations

import asyncio
from typing import Any

from aqnode.wal.resp import PipelinedConnection


class FakeConnection:
    def __init__(self, writing: asyncio.Event) -> None:
        self.writing = writing
        self.disconnected = False

    async def connect(self) -> None:
        return None

    async def send_packed_command(self, data: bytes, check_health: bool = True) -> None:
        await self.writing.wait()  # the write is in progress until the test lets it end

    async def read_response(self) -> Any:
        await asyncio.sleep(3600)

    async def disconnect(self) -> None:
        self.disconnected = True


class FakePool:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def make_connection(self) -> FakeConnection:
        return self.conn


class FakeClient:
    def __init__(self, conn: FakeConnection) -> None:
        self.connection_pool = FakePool(conn)


def test_a_batch_written_while_the_connection_broke_is_failed_not_stranded() -> None:
    async def body() -> None:
        writing = asyncio.Event()
        conn = FakeConnection(writing)
        pipe = PipelinedConnection(FakeClient(conn))  # type: ignore[arg-type]
        sending = asyncio.ensure_future(pipe.send([["PING"]]))
        await asyncio.sleep(0)  # the batch is being written
        pipe.abandon("Redis was given up")  # nothing waits yet: nothing to fail
        await pipe._broken(conn, ConnectionError("reset"))  # the connection breaks now
        writing.set()
        future = await sending
        done, _ = await asyncio.wait([future], timeout=1)
        assert done, "the batch's future was left pending: the commit loop would hang"
        assert isinstance(future.exception(), ConnectionError)
        assert conn.disconnected

    asyncio.run(body())
