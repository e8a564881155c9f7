"""Commands to Redis as raw RESP, for the write-ahead log's hot path.

redis-py encodes each argument in pure Python and copies its growing buffer for each
one; a commit carries several arguments per message, so that cost dominated the
supervisor's profile. Here a whole pipeline is packed with one ``bytes.join`` and sent
on one pooled connection; replies are read with redis-py's own parser.
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


async def pipeline(client: aioredis.Redis, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """Send the commands in one write and read one reply each; a command's error reply is
    returned in its place, a broken connection raises (and is thrown away)."""
    data: list[bytes] = []
    for command in commands:
        data.extend(pack(command))
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
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
        await conn.disconnect()  # a half-read connection must not go back to the pool
        raise
    finally:
        await pool.release(conn)
