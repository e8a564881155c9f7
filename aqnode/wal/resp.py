"""Commands to Redis as raw RESP, pipelined on a connection of the log's own.

redis-py encodes each argument in pure Python and copies its growing buffer for each
one, and its pool does locking and bookkeeping on every checkout; a commit carries
several arguments per message, so these costs dominated the supervisor's profile. Here a
whole commit is packed with one ``bytes.join`` and written at once, and the next commit
may be written before the previous one's replies are back: Redis runs the commands of
one connection in order, so the log's order is the order of :meth:`post` calls. One
reader takes the replies in that same order.

On a Redis Cluster the connection goes to the primary that holds the log's hash slot;
a redirection (MOVED, ASK) or a cluster-down reply fails that batch like any error
reply, and the next batch asks the cluster where the slot lives now.

Scripts go by their SHA1 (EVALSHA): with EVAL, Redis reads and hashes a script's source
on every call, about a third of its work for a commit of one message. Each new
connection first loads every script, in one MULTI/EXEC so that no SCRIPT FLUSH can fall
between two of the loads. A Redis whose script cache is emptied under an open
connection (``SCRIPT FLUSH``) answers NOSCRIPT; the connection then loads the scripts
again and holds everything new, and once every command written after the refused one
has been answered, it writes the refused command and those after it again, in their
order, then what it held. That can neither run a command twice nor reorder two: a
refused command did nothing, and every command written after it on this connection is
refused too, because a script's source carries a token of its log's own (see
:class:`aqnode.wal.log.WriteAheadLog`), so no other log's connection ever loads it.
Should one of them have run all the same (this log's previous connection loading late,
say), nothing is written again and the connection ends like an outage: every batch it
owes hears that its outcome is unknown.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from aqnode.wal.redis_errors import ERROR_REPLY, SCRIPT_MISSING, SLOT_ELSEWHERE
from aqnode.wal.resp_parse import ReplyParser, ReplyProtocolError

log = logging.getLogger(__name__)

Arg = bytes | str | int


_HEADERS = [b"$%d\r\n" % n for n in range(4096)]  #: bulk-string headers of short lengths


def pack(args: Sequence[Arg]) -> list[bytes]:
    """One command as RESP parts (``*N``, then ``$len`` and the bytes of each argument).

    A commit packs thousands of arguments: the class checks are identity tests and the
    headers of short arguments come from a table (about 1.7x faster than formatting)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    headers = _HEADERS
    for arg in args:
        if arg.__class__ is not bytes:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
        size = len(arg)
        append(headers[size] if size < 4096 else b"$%d\r\n" % size)
        append(arg)
        append(b"\r\n")
    return parts


def _loads(scripts: Sequence[str]) -> list[tuple[bytes, Any]]:
    """SCRIPT LOAD of every script in one MULTI/EXEC (no SCRIPT FLUSH can fall between
    two of them), each command with the reply it must get."""
    if not scripts:
        return []
    return [
        (_command(("MULTI",)), b"OK"),
        *((_command(("SCRIPT", "LOAD", body)), b"QUEUED") for body in scripts),
        (_command(("EXEC",)), [script_sha(body).encode() for body in scripts]),
    ]


def script_sha(body: str) -> str:
    """The SHA1 Redis names a script by (what SCRIPT LOAD returns, what EVALSHA takes)."""
    return hashlib.sha1(body.encode()).hexdigest()


Replies = list[Any] | BaseException  #: a batch's replies, or why it has none
OnReplies = Callable[[Replies], None]
#: NOSCRIPT rounds in a row with no other reply in between before the connection gives
#: up: each SCRIPT FLUSH costs at most one, so only a Redis that cannot keep scripts
#: (or flushes in a tight loop) gets there
MAX_RESENDS: Final = 10


class PipelinedConnection:
    """One dedicated connection, made from the client's settings, (re)opened on demand.

    :meth:`post` writes at once; the batch's callback gets its replies (a command's error
    reply stands in its place) straight from the socket's ``data_received``, with no
    task to wake in between. A broken connection fails every batch in flight (their
    outcome is unknown) and is thrown away; the next post opens a new one.

    The connection is redis-py's (it does the handshake: TLS, AUTH, HELLO, SELECT); once
    it is up, its transport is handed to a :class:`_ReplyProtocol` of ours, which first
    loads ``scripts`` (sources whose EVALSHA, by :func:`script_sha`, may follow at once).
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        slot_key: str = "",
        scripts: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._slot_key = slot_key  #: a key of the log's hash slot (Redis Cluster)
        #: the scripts' load, as (command, the reply Redis must give it)
        self._loads = _loads(scripts)
        self._topology_stale = False
        self._conn: Any = None
        self._protocol: _ReplyProtocol | None = None
        self._opening = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()  #: redis-py's disconnects under way

    async def send(self, commands: Sequence[Sequence[Arg]]) -> asyncio.Future[list[Any]]:
        """:meth:`post` with a future of the replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def done(replies: Replies) -> None:
            if future.done():
                return
            if isinstance(replies, BaseException):
                future.set_exception(replies)
            else:
                future.set_result(replies)

        await self.post(commands, done)
        return future

    async def post(self, commands: Sequence[Sequence[Arg]], done: OnReplies) -> None:
        """Write ``commands`` now; ``done`` gets their replies, or the exception that
        ended the connection first (then their outcome is unknown), exactly once. Raises
        (and never calls ``done``) if no connection could be opened."""
        encoded = [_command(c) for c in commands]
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connection()  # raises: then ``done`` is never called
        # Straight into the transport (no drain: the log keeps at most MAX_IN_FLIGHT
        # commits unanswered, so the buffer stays small).
        protocol.write(encoded, done)

    def post_open(self, commands: Sequence[Sequence[Arg]], done: OnReplies) -> bool:
        """:meth:`post` on the connection already open; False (``done`` is not called,
        nothing is written) when there is none."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return False
        protocol.write([_command(c) for c in commands], done)
        return True

    async def connect(self) -> None:
        """Open the connection unless it is open; raises if it cannot be opened."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            await self._connection()

    async def _connection(self) -> _ReplyProtocol:
        async with self._opening:
            protocol = self._protocol
            if protocol is None or protocol.closed:
                conn = await self._new_connection()
                await conn.connect()
                self._conn = conn
                protocol = self._protocol = _ReplyProtocol(conn, self._lost, self._loads)
                protocol.load_scripts()
            return protocol

    def _lost(self, protocol: _ReplyProtocol, slot_moved: bool) -> None:
        if slot_moved:
            self._topology_stale = True
        if protocol is self._protocol:
            self._protocol = None
            conn, self._conn = self._conn, None
            # redis-py's object still thinks it is connected: let it close its side too
            task = asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

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

    def abandon(self, reason: str) -> None:
        """Fail every batch waiting for replies now (their outcome is unknown) and drop
        the connection: used when the health check has given Redis up, so that callers
        hear at once instead of at the socket time-out."""
        protocol = self._protocol
        if protocol is not None and protocol.owed:
            protocol.fail(ConnectionError(reason))

    async def close(self) -> None:
        protocol = self._protocol
        if protocol is not None:
            protocol.fail(ConnectionError("the log was closed"))
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()
        await asyncio.gather(*self._closing, return_exceptions=True)


class _Batch:
    """One post: its callback and its replies as they come."""

    __slots__ = ("done", "left", "replies")

    def __init__(self, count: int, done: OnReplies) -> None:
        self.done = done
        self.replies: list[Any] = [None] * count
        self.left = count


class _Slot:
    """One command written and not yet answered: whose reply it is (``batch`` and
    ``index``), or a command of the scripts' load (``expect``: the reply it must get),
    or the first copy of a command refused by NOSCRIPT or written after one (``stale``:
    its reply must be NOSCRIPT, and the command goes again once it is)."""

    __slots__ = ("batch", "command", "expect", "index", "stale")

    def __init__(
        self, batch: _Batch | None, index: int, command: bytes, expect: Any = None
    ) -> None:
        self.batch = batch
        self.index = index
        self.command = command
        self.expect = expect
        self.stale = False


class _ReplyProtocol(asyncio.Protocol):
    """Reads the replies of one connection and hands each batch its own, in send order.

    Takes the transport over from redis-py's StreamReaderProtocol, which it keeps for the
    writer's flow control (pause/resume) and its close. While replies are owed, a socket
    time-out without a byte fails the connection (a frozen Redis); an idle one waits.
    One :class:`_Slot` per command owed, in write order, says whose reply comes next.
    While the scripts are loaded again after a NOSCRIPT, what is to be written again
    (``_again``) and new batches (``_held``) wait, in order, for the load's last reply.
    """

    def __init__(
        self,
        conn: Any,
        lost: Callable[[_ReplyProtocol, bool], None],
        loads: Sequence[tuple[bytes, Any]] = (),
    ) -> None:
        self._conn = conn
        self._lost = lost
        self._loads = loads
        writer: asyncio.StreamWriter = conn._writer
        self._transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self._stream_protocol: Any = self._transport.get_protocol()
        self._timeout: float | None = conn.socket_timeout
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._slots: deque[_Slot] = deque()
        self._again: list[_Slot] | None = None  #: refused commands, None when none wait
        self._held: list[_Slot] = []  #: new commands written while ``_again`` waits
        self._resends = 0  #: NOSCRIPT rounds since the last reply that was not one
        self._progress = 0.0  #: loop time of the last byte read, or of the first write owed
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._transport.set_protocol(self)

    @property
    def owed(self) -> bool:
        return bool(self._slots) or self._again is not None

    def load_scripts(self) -> None:
        """Load every script, ahead of any command that names one."""
        if self._loads:
            self._write([_Slot(None, 0, command, expect) for command, expect in self._loads])

    def write(self, commands: list[bytes], done: OnReplies) -> None:
        """Write one batch of encoded commands; ``done`` gets their replies, once."""
        if self.closed or self._transport.is_closing():
            self.fail(ConnectionError("the connection to Redis closed"))
            _call(done, ConnectionError("the connection to Redis closed"))
            return
        if not commands:
            _call(done, [])
            return
        batch = _Batch(len(commands), done)
        slots = [_Slot(batch, i, command) for i, command in enumerate(commands)]
        if self._again is not None:  # behind what goes again, in order
            self._held.extend(slots)
        else:
            self._write(slots)

    def _write(self, slots: list[_Slot]) -> None:
        self._transport.write(b"".join(slot.command for slot in slots))
        if not self._slots:
            self._progress = self._loop.time()
        self._slots.extend(slots)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._timeout:
            self._timer = self._loop.call_later(self._timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if self.closed or not self._slots or not self._timeout:
            return
        left = self._progress + self._timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_timeout)
        else:
            self.fail(TimeoutError(f"Redis sent nothing for {self._timeout:g}s"))

    # ---- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._progress = self._loop.time()
        try:
            for reply in self._parser.feed(data):
                if not self._slots:
                    raise ReplyProtocolError("Redis sent a reply nobody asked for")
                if isinstance(reply, Exception) and not isinstance(reply, ERROR_REPLY):
                    raise reply  # LOADING, NOAUTH, ...: the connection is not usable
                if self._took(self._slots.popleft(), reply):
                    return
            if not self._slots and self._parser.buffered:
                raise ReplyProtocolError("Redis sent a reply nobody asked for")
        except Exception as exc:  # any failure ends this connection, told to every batch
            self.fail(exc)

    def _took(self, slot: _Slot, reply: Any) -> bool:
        """Give ``reply`` to ``slot``; True when that ended the connection."""
        if slot.stale:  # a first copy: refused, or the re-send would run it again
            if isinstance(reply, SLOT_ELSEWHERE):
                self.fail(ConnectionError("the log's slot moved"), slot_moved=True)
                return True
            if not isinstance(reply, SCRIPT_MISSING):
                raise ReplyProtocolError(
                    f"a command written after one refused with NOSCRIPT ran ({reply!r}): "
                    "nothing is written again"
                )
            self._release()
            return False
        batch = slot.batch
        if batch is None:  # a command of the scripts' load
            if reply != slot.expect:
                raise ConnectionError(f"Redis would not load the log's scripts ({reply!r})")
            self._release()
            return False
        if isinstance(reply, SCRIPT_MISSING):
            self._refused(slot)
            return False
        self._resends = 0
        batch.replies[slot.index] = reply
        batch.left -= 1
        if batch.left:
            return False
        _call(batch.done, batch.replies)
        if any(isinstance(r, SLOT_ELSEWHERE) for r in batch.replies):
            self.fail(ConnectionError("the log's slot moved"), slot_moved=True)
            return True
        return False

    def _refused(self, refused: _Slot) -> None:
        """NOSCRIPT: the script cache was emptied. Load the scripts again; ``refused`` and
        every command owed after it go again once all their first copies have been
        refused too (:meth:`_release`), new ones after them."""
        self._resends += 1
        if self._resends > MAX_RESENDS:
            self._slots.appendleft(refused)  # still owed: fail() tells its batch
            raise ConnectionError("Redis keeps losing the log's scripts (NOSCRIPT)")
        again = [_Slot(refused.batch, refused.index, refused.command)]
        for slot in self._slots:
            if slot.batch is not None and not slot.stale:
                again.append(_Slot(slot.batch, slot.index, slot.command))
                slot.stale = True
                slot.command = b""  # its copy holds it
        self._again = again
        log.warning("Redis lost the log's scripts (SCRIPT FLUSH?): loading them again")
        self._write([_Slot(None, 0, command, expect) for command, expect in self._loads])

    def _release(self) -> None:
        """Once nothing is owed but what this connection's last load leaves (every first
        copy refused, the scripts back), write again what waits, in order."""
        if self._again is None or self._slots:
            return
        slots = self._again + self._held
        self._again, self._held = None, []
        self._write(slots)

    def eof_received(self) -> bool:
        self.fail(ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))
        self._stream_protocol.connection_lost(exc)  # the writer's drain and close wake

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()

    def fail(self, exc: BaseException, *, slot_moved: bool = False) -> None:
        """End the connection: every batch still owed gets ``exc`` (outcome unknown)."""
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._lost(self, slot_moved)
            self._transport.close()
        # In write order: a first copy (stale) stands for a batch whose copy waits in
        # _again, which holds the earliest batches still owed.
        owed = [
            *(slot for slot in self._slots if not slot.stale),
            *(self._again or ()),
            *self._held,
        ]
        self._slots, self._again, self._held = deque(), None, []
        told: set[int] = set()
        for slot in owed:
            batch = slot.batch
            if batch is not None and id(batch) not in told:
                told.add(id(batch))
                _call(batch.done, exc)


def _command(args: Sequence[Arg]) -> bytes:
    """One command, encoded."""
    return b"".join(pack(args))


def _call(done: OnReplies, replies: Replies) -> None:
    """A batch's callback; its bug is logged, never taken for the connection's failure."""
    try:
        done(replies)
    except Exception:
        log.exception("a Redis reply's callback failed")
