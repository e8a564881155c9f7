"""Commands to Redis as raw RESP, pipelined on a connection of the log's own.

redis-py encodes each argument in pure Python and copies its growing buffer for each
one, and its pool does locking and bookkeeping on every checkout; a commit carries
several arguments per message, so these costs dominated the supervisor's profile. Here a
whole commit is packed with one ``bytes.join`` and written at once, and the next commit
may be written before the previous one's replies are back: Redis runs the commands of
one connection in order, so the log's order is the order of :meth:`send` calls. One
reader takes the replies in that same order.

On a Redis Cluster the connection goes to the primary that holds the log's hash slot;
a redirection (MOVED, ASK) or a cluster-down reply fails that batch like any error
reply, and the next batch asks the cluster where the slot lives now.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from aqnode.wal.redis_errors import ERROR_REPLY, SLOT_ELSEWHERE
from aqnode.wal.resp_parse import ReplyParser, ReplyProtocolError

Arg = bytes | str | int
READ_SIZE = 1 << 18  #: bytes asked of the socket per read: a big commit's replies at once


def pack(args: Sequence[Arg]) -> list[bytes]:
    """One command as RESP parts (``*N``, then ``$len`` and the bytes of each argument)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        append(b"$%d\r\n" % len(arg))
        append(arg)
        append(b"\r\n")
    return parts


class PipelinedConnection:
    """One dedicated connection, made from the client's settings, (re)opened on demand.

    :meth:`send` writes at once and returns a future of the replies; a command's error
    reply stands in its place. A broken connection fails every batch in flight (their
    outcome is unknown) and is thrown away; the next send opens a new one.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, slot_key: str = "") -> None:
        self._client = client
        self._slot_key = slot_key  #: a key of the log's hash slot (Redis Cluster)
        self._topology_stale = False
        self._conn: Any = None
        self._waiting: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._reader_conn: Any = None
        self._opening = asyncio.Lock()
        self._timeout: float | None = None  #: the socket time-out of the reader's connection
        self._deadline: asyncio.Timeout | None = None  #: the reader's, while it reads

    async def send(self, commands: Sequence[Sequence[Arg]]) -> asyncio.Future[list[Any]]:
        data: list[bytes] = []
        for command in commands:
            data.extend(pack(command))
        conn = self._conn if self._conn is not None else await self._connection()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        writer = conn._writer  # redis-py's stream, after its handshake (AUTH, HELLO, SELECT)
        if writer is None or writer.is_closing():
            # The connection broke (or was abandoned) before this batch was written: no
            # reader will read its replies. Its outcome: not applied, but fail it like the
            # batches that were waiting (never leave a commit without an answer).
            await self._broken(conn, ConnectionError("the connection to Redis closed"))
            future.set_exception(ConnectionError("the connection to Redis closed"))
            return future
        # Straight into the transport (no drain: at most MAX_IN_FLIGHT commits are unread,
        # so the buffer stays small); the reply waits in _waiting in send order.
        writer.write(b"".join(data))
        self._waiting.append((len(commands), future))
        if self._reader is None or self._reader.done() or self._reader_conn is not conn:
            self._reader_conn = conn  # a reader still bound to a dead connection exits
            self._timeout = conn.socket_timeout
            self._reader = asyncio.get_running_loop().create_task(self._read(conn))
        elif len(self._waiting) == 1:
            self._arm_deadline()
        return future

    async def _connection(self) -> Any:
        async with self._opening:
            if self._conn is None:
                conn = await self._new_connection()
                await conn.connect()
                self._conn = conn
            return self._conn

    async def _new_connection(self) -> Any:
        client = self._client
        if not isinstance(client, RedisCluster):
            return client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        if self._topology_stale:
            await client.nodes_manager.initialize()
            self._topology_stale = False
        else:
            await client.initialize()  # once: learns the slots
        node = client.get_node_from_key(self._slot_key)
        if node is None:
            raise ConnectionError(f"no Redis Cluster node serves the slot of {self._slot_key}")
        # a dedicated connection made like the node's own (its pool is redis-py's)
        return node.connection_class(**node.connection_kwargs)

    async def _read(self, conn: Any) -> None:
        """Take the replies in send order, for as long as the connection lives: whole
        reads through :class:`ReplyParser`, so one wake-up serves every reply that came
        together. While replies are owed, a socket time-out without a byte breaks the
        connection (a frozen Redis); an idle connection waits without one."""
        reader: asyncio.StreamReader = conn._reader
        parser = ReplyParser()
        replies: list[Any] = []  # of the batch at the head of _waiting
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                self._arm_deadline()
                while conn is self._conn:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    for reply in parser.feed(data):
                        if conn is not self._conn:  # abandoned meanwhile: not our queue now
                            return
                        if not self._waiting:
                            raise ReplyProtocolError("Redis sent a reply nobody asked for")
                        if isinstance(reply, Exception) and not isinstance(reply, ERROR_REPLY):
                            raise reply  # LOADING, NOAUTH, ...: the connection is not usable
                        replies.append(reply)
                        count, future = self._waiting[0]
                        if len(replies) < count:
                            continue
                        self._waiting.popleft()
                        batch, replies = replies, []
                        if not future.done():
                            future.set_result(batch)
                        if any(isinstance(r, SLOT_ELSEWHERE) for r in batch):
                            self._topology_stale = True
                            await self._broken(conn, ConnectionError("the log's slot moved"))
                            return
                    if not self._waiting and parser.buffered:
                        raise ReplyProtocolError("Redis sent a reply nobody asked for")
                    timeout = self._timeout
                    deadline.reschedule(
                        loop.time() + timeout if self._waiting and timeout else None
                    )
        except BaseException as exc:
            await self._broken(conn, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._deadline = None

    def _arm_deadline(self) -> None:
        """Replies are owed and the reader waits without a deadline: give it one."""
        deadline, timeout = self._deadline, self._timeout
        if deadline is not None and timeout and deadline.when() is None:
            deadline.reschedule(asyncio.get_running_loop().time() + timeout)

    async def _broken(self, conn: Any, exc: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        waiting, self._waiting = self._waiting, deque()
        for _, future in waiting:
            if not future.done():
                future.set_exception(
                    exc if isinstance(exc, Exception) else ConnectionError("connection closed")
                )
        await conn.disconnect()

    def abandon(self, reason: str) -> None:
        """Fail every batch waiting for replies now (their outcome is unknown) and drop
        the connection: used when the health check has given Redis up, so that callers
        hear at once instead of at the socket time-out."""
        conn = self._conn
        if conn is not None and self._waiting:
            asyncio.get_running_loop().create_task(self._broken(conn, ConnectionError(reason)))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._conn is not None:
            await self._broken(self._conn, ConnectionError("the log was closed"))
