"""The log's pipelined connection (aqnode.wal.resp.PipelinedConnection) on a real Redis:
replies in send order with many batches in flight, and no batch ever left without an
answer: a connection killed while replies are owed, a frozen Redis (the socket
time-out), an idle connection closed by Redis (the next batch reconnects). A stranded
batch would hang the log's commit loop and every enqueue after it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aqnode.wal.resp import PipelinedConnection
from tests.redis_fixture import RedisServer

Body = Callable[[PipelinedConnection], Awaitable[None]]


def _run(redis_url: str, body: Body, **opts: Any) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url, **opts)
        pipe = PipelinedConnection(client)
        try:
            await asyncio.wait_for(body(pipe), 30)
        finally:
            await pipe.close()
            await client.aclose()

    asyncio.run(main())


def test_many_batches_in_flight_get_their_own_replies_in_order(redis_url: str) -> None:
    async def body(pipe: PipelinedConnection) -> None:
        futures = [
            await pipe.send([["INCR", "n"], ["ECHO", b"x" * (i % 7) * 1000]]) for i in range(500)
        ]
        replies = await asyncio.gather(*futures)
        assert [r[0] for r in replies] == list(range(1, 501))
        assert [r[1] for r in replies] == [b"x" * (i % 7) * 1000 for i in range(500)]
        error = await (await pipe.send([["INCR", "n", "extra"], ["PING"]]))
        assert isinstance(error[0], redis.exceptions.ResponseError)  # in its place
        assert error[1] == b"PONG"

    _run(redis_url, body)


def test_a_killed_connection_fails_what_is_owed_and_the_next_batch_reconnects(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(pipe: PipelinedConnection) -> None:
        (conn_id,) = await (await pipe.send([["CLIENT", "ID"]]))
        owed = await pipe.send([["BLPOP", "never", "20"]])
        redis_client.client_kill_filter(_id=conn_id)
        done, _ = await asyncio.wait([owed], timeout=10)
        assert done, "the owed batch was left without an answer"
        assert isinstance(owed.exception(), ConnectionError)
        assert await (await pipe.send([["PING"]])) == [b"PONG"]

    _run(redis_url, body)


def test_an_idle_connection_closed_by_redis_is_replaced(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(pipe: PipelinedConnection) -> None:
        (conn_id,) = await (await pipe.send([["CLIENT", "ID"]]))
        redis_client.client_kill_filter(_id=conn_id)
        for _ in range(100):  # the reader sees the close: the connection is dropped
            if pipe._conn is None:
                break
            await asyncio.sleep(0.05)
        assert pipe._conn is None
        assert await (await pipe.send([["PING"]])) == [b"PONG"]

    _run(redis_url, body)


@pytest.mark.parametrize("owed_first", [False, True])
def test_a_frozen_redis_fails_the_owed_batch_at_the_socket_timeout(
    redis_server: RedisServer, redis_url: str, owed_first: bool
) -> None:
    async def body(pipe: PipelinedConnection) -> None:
        assert await (await pipe.send([["PING"]])) == [b"PONG"]  # idle reader, no deadline
        if owed_first:
            slow = await pipe.send([["DEBUG", "SLEEP", "0.1"]])
        redis_server.freeze()
        try:
            owed = await pipe.send([["PING"]])
            done, _ = await asyncio.wait([owed], timeout=10)
        finally:
            redis_server.thaw()
        assert done, "a frozen Redis left the batch without an answer"
        assert isinstance(owed.exception(), TimeoutError)
        if owed_first:
            assert slow.done()
        assert await (await pipe.send([["PING"]])) == [b"PONG"]

    _run(redis_url, body, socket_timeout=0.5)
