"""Commands to Redis as raw RESP on a connection of the log's own, for the hot path.

redis-py encodes each argument in pure Python and copies its growing buffer for each
one, and its pool does locking and bookkeeping on every checkout; a commit carries
several arguments per message, so these costs dominated the supervisor's profile. Here
a whole pipeline is packed with one ``bytes.join`` and written at once on one connection
that only the (sequential) commit loop uses; replies are read with redis-py's parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

Arg = bytes | str | int


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


class RawPipeline:
    """One dedicated connection, made from the client's settings, (re)opened on demand.

    Not safe for concurrent use: the write-ahead log's commit loop runs one at a time.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None

    async def run(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send the commands in one write and read one reply each; a command's error reply
        is returned in its place, a broken connection raises (and is thrown away)."""
        data: list[bytes] = []
        for command in commands:
            data.extend(pack(command))
        conn = self._conn
        if conn is None:
            conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()
            self._conn = conn
        try:
            await conn.send_packed_command(b"".join(data), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except redis_errors.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            self._conn = None  # a half-read connection is never used again
            await conn.disconnect()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.disconnect()
