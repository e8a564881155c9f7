"""Supervisor <-> shard frames over a Unix domain socket.

Wire format (one frame)::

    +----------------------+---------------------------------------------+
    | length: uint32, BE   | msgpack array of items (tagged, array-like) |
    +----------------------+---------------------------------------------+

A frame carries every item queued during one event-loop tick, so a burst of messages
costs one write and one read. Each direction has its own tagged union; new fields get
defaults and go at the end. The shard opens with ``Hello`` and the supervisor answers
``Welcome``; a protocol mismatch closes the socket. A clean close (EOF between frames)
is told apart from a truncated frame.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from types import GenericAlias
from typing import Any, Generic, TypeVar

import msgspec

from aqnode.errors import AqnodeError
from aqnode.wiretypes import MessageEntry

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 * 1024 * 1024  #: bytes; a larger length means a corrupt stream
_LENGTH = struct.Struct(">I")
_ARRAY_HEADER_MAX = 5  #: bytes of a msgpack array header (array 32)


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items: a frame is one such array, its
    items encoded one by one as they were sent."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


class _Item(msgspec.Struct, tag=True, array_like=True, omit_defaults=False):
    pass


# ---- shard -> supervisor -------------------------------------------------------------


class Hello(_Item):
    protocol: int
    shard_index: int
    pid: int


class Ready(_Item):
    """The handler modules are imported; the shard takes messages. ``catalogue``: every
    message it handles, as data, so that the supervisor validates without user code."""

    catalogue: list[MessageEntry] = []


class Started(_Item):
    """The worker is about to call the handler of ``message_id``. The shard waits until
    this frame is in the kernel before the call, so a shard that dies leaves it readable:
    a `dispatched` message without it provably never started and runs again on the
    restarted shard instead of being dead-lettered."""

    message_id: str


class BootFailed(_Item):
    """The shard cannot serve (its handler modules, or the config against them): sent
    before it exits with EXIT_IMPORT_ERROR, so the node stops with one clear line."""

    reason: str


class Dispatch(_Item):
    """Make ``dispatched`` durable for this message, then say so with DispatchResult."""

    message_id: str


class Outcome(_Item):
    """The handler finished: ``reply`` (msgpack) on success, ``error`` (AqError dict) else."""

    message_id: str
    ok: bool
    reply: bytes = b""
    error: dict[str, Any] | None = None
    started_at: float = 0.0  # unix seconds, when the handler started (for queue wait)
    duration_s: float = 0.0  # the handler's run time


class Retry(_Item):
    """The handler failed with attempts left: make ``enqueued`` durable again (head of
    line), then say so with RetryResult; the worker re-dispatches it after the backoff."""

    message_id: str
    error: dict[str, Any]


class WorkerGone(_Item):
    """The worker of ``entity_key`` was idle and is torn down."""

    entity_key: str


class Submit(_Item):
    """A handler's ``ctx.bus`` send; answered by SubmitResult."""

    request_id: int
    entity_type: str
    message: str
    entity_id: str
    payload: bytes  # msgpack
    wait: bool
    timeout_ms: int
    message_id: str = ""
    caller: str = ""  # the sending handler's entity key, for SELF_WAIT


class Heartbeat(_Item):
    workers: int
    queue_depth: int
    handled: int


# ---- supervisor -> shard -------------------------------------------------------------


class Welcome(_Item):
    protocol: int
    shard_index: int
    shard_count: int
    config: bytes  # aqnode.config.encode_config


class Deliver(_Item):
    """A durable message for a worker of this shard, in per-entity order."""

    message_id: str
    entity_type: str
    message: str
    entity_id: str
    payload: bytes  # msgpack
    enqueued_at: float
    attempt: int = 1
    dispatched: bool = False  # already `dispatched` in the log: run it without asking
    fencing_token: int = 0  # cluster mode: grows each time the entity changes owner


class DispatchResult(_Item):
    message_id: str
    ok: bool
    error: dict[str, Any] | None = None
    again: bool = False  # not applied, the message keeps its place: ask again later


class RetryResult(_Item):
    message_id: str
    ok: bool
    error: dict[str, Any] | None = None
    again: bool = False


class SubmitResult(_Item):
    request_id: int
    ok: bool
    message_id: str = ""
    reply: bytes = b""
    error: dict[str, Any] | None = None


class Stop(_Item):
    """Finish running handlers within ``drain_timeout_ms`` and exit."""

    drain_timeout_ms: int


class Lease(_Item):
    """Cluster mode: no handler may start once ``time.monotonic()`` passes ``until`` (the
    node's membership lease, less a margin) until a newer lease comes; CLOCK_MONOTONIC
    runs on while a process is stopped, so a paused shard that wakes finds it over."""

    until: float


ToSupervisor = (
    Hello
    | Ready
    | BootFailed
    | Started
    | Dispatch
    | Outcome
    | Retry
    | WorkerGone
    | Submit
    | Heartbeat
)
ToShard = Welcome | Deliver | DispatchResult | RetryResult | SubmitResult | Stop | Lease

In = TypeVar("In")  # the union of items this end receives
Out = TypeVar("Out")  # the union of items this end sends


class ProtocolError(AqnodeError):
    """The peer sent something that is not a valid frame (never reaches a client)."""


class FrameEncodeError(AqnodeError):
    """An item that cannot travel (user-made text that is not UTF-8, an integer out of
    msgpack's range): raised to its sender, and nothing of it is queued."""


class FrameBudgetExceeded(ProtocolError):
    """Unfinished frames on the connections sharing a FrameBudget hold more than it."""


class FrameBudget:
    """Bytes of unfinished frames that several connections may hold together: the
    node's defence against many peers each starting a large frame."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class TruncatedFrame(ProtocolError):
    """The peer closed in the middle of a frame (it died while writing): every earlier
    frame was whole, so the stream was still read to its end."""


class FrameChannel(Generic[In, Out]):
    """One end of a socket: ``send`` queues an item, frames go out once per loop tick.

    Made by :func:`supervisor_end` or :func:`shard_end`, which pair each direction's
    union with the right end.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        incoming: object,
        max_frame: int = MAX_FRAME_BYTES,
    ) -> None:
        """``incoming``: the union ``In`` as a runtime object (a union is no ``type``);
        ``max_frame``: the largest frame read (a longer length is a ProtocolError) and the
        size above which a tick's items are split over several frames."""
        self._reader = reader
        self._max_frame = max_frame
        self._writer = writer
        self._encoder = msgspec.msgpack.Encoder()
        # GenericAlias is list[incoming], spelt so that a type checker accepts a value.
        self._decoder: msgspec.msgpack.Decoder[list[In]] = msgspec.msgpack.Decoder(
            GenericAlias(list, (incoming,))
        )
        self._pending: list[bytes] = []  #: this tick's items, encoded
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._confirming: list[asyncio.Future[None]] = []

    def encode(self, item: Out) -> bytes:
        """``item`` as it will travel; FrameEncodeError if it cannot (text that is not
        UTF-8, an integer out of msgpack's range, ...). Encoding happens here, at the
        sender's call, so a bad item fails its own sender and never the frame it would
        have shared with other senders' items."""
        try:
            return self._encoder.encode(item)
        except Exception as exc:  # msgspec raises TypeError, ValueError, OverflowError, ...
            raise FrameEncodeError(
                f"a {type(item).__name__} cannot be encoded: {type(exc).__name__}: {exc}"
            ) from exc

    def send(self, item: Out) -> None:
        """Queue ``item`` for this tick's frame; FrameEncodeError (nothing queued) if it
        cannot be encoded."""
        self.send_encoded(self.encode(item))

    def send_all(self, items: Sequence[Out]) -> None:
        """Queue every item or none: FrameEncodeError if any cannot be encoded."""
        for data in [self.encode(item) for item in items]:
            self.send_encoded(data)

    def send_encoded(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send_now(self, item: Out) -> bool:
        """Like :meth:`send`, but written at once when nothing else is queued, so that a
        lone item (one call at a time) goes out without waiting a loop turn; what follows
        in the same tick is queued behind it as usual. True when everything sent so far,
        ``item`` included, is in the kernel now: no :meth:`confirm` is needed for it."""
        data = self.encode(item)
        if self._flush_scheduled or self._writer.is_closing():
            self.send_encoded(data)
            return False
        self._write([data])
        # What else is sent in this tick is queued, and goes out in one frame at its end.
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)
        return self._writer.transport.get_write_buffer_size() == 0

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, self._pending = self._pending, []
        if items and not self._writer.is_closing():
            self._write(items)
        if self._confirming:
            waiting, self._confirming = self._confirming, []
            if (
                not self._writer.is_closing()
                and self._writer.transport.get_write_buffer_size() == 0
            ):
                for future in waiting:  # the usual case: the write went straight to the kernel
                    if not future.done():
                        future.set_result(None)
            else:
                self._loop.create_task(self._confirm(waiting))

    def _write(self, items: list[bytes]) -> None:
        """Encoded items as frames: one, unless together they exceed the largest frame
        the peer reads (then as many as it takes; an item alone is never split)."""
        size = sum(map(len, items))
        if size + _ARRAY_HEADER_MAX > self._max_frame and len(items) > 1:
            half = len(items) // 2
            self._write(items[:half])
            self._write(items[half:])
            return
        head = _array_header(len(items))
        self._writer.write(b"".join((_LENGTH.pack(len(head) + size), head, *items)))

    def confirm(self) -> asyncio.Future[None]:
        """A future done once everything sent so far is in the kernel (not in our buffer):
        what a process wrote before it died is still readable by the peer. Items of the
        same loop tick still share one frame; ConnectionError if the socket is closed."""
        future = self._loop.create_future()
        self._confirming.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    async def _confirm(self, waiting: list[asyncio.Future[None]]) -> None:
        transport = self._writer.transport
        error: BaseException | None = None
        try:
            while not self._writer.is_closing() and transport.get_write_buffer_size() > 0:
                # With a high-water mark of 0, drain() waits until the buffer is empty.
                transport.set_write_buffer_limits(high=0)
                await self._writer.drain()
            if self._writer.is_closing():
                error = ConnectionError("the socket closed before the frame was written")
        except ConnectionError as exc:
            error = exc
        for future in waiting:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    async def receive(self, max_frame: int | None = None) -> list[In] | None:
        """The next frame's items; ``None`` on a clean close between frames.
        ``max_frame``: a smaller limit than the channel's for this frame (a greeting)."""
        try:
            header = await self._reader.readexactly(_LENGTH.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise TruncatedFrame("the peer closed in the middle of a frame header") from None
        except ConnectionError:  # reset: the peer died with our data unread
            return None
        (length,) = _LENGTH.unpack(header)
        limit = self._max_frame if max_frame is None else min(max_frame, self._max_frame)
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes exceeds {limit}")
        try:
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise TruncatedFrame("the peer closed in the middle of a frame") from None
        return self.decode(body)

    async def serve(
        self,
        on_items: Callable[[list[In]], None],
        *,
        pause_above: int | None = None,
        budget: FrameBudget | None = None,
        frame_timeout_s: float | None = None,
    ) -> None:
        """Call ``on_items`` with each frame's items, straight from the socket's
        ``data_received`` (no task to wake per frame), until the peer closes: returns on a
        clean close (or a reset), raises TruncatedFrame, ProtocolError, or what
        ``on_items`` raised (reading stops; the caller closes the channel, after any last
        words: every caller closes it once this returns). ``receive`` may not be used once
        this runs. ``pause_above``: stop reading while more than that many bytes of ours
        wait to be written (a peer that does not read its answers). ``budget``: the bytes
        of unfinished frames that all connections sharing it may hold (past it, this one
        ends with FrameBudgetExceeded); ``frame_timeout_s``: how long a frame may take to
        arrive once it has begun (past it, ProtocolError): an untrusted peer that starts
        large frames and never finishes them holds neither memory nor a slot for ever."""
        reader: Any = self._reader  # its buffer is private to asyncio: read as it stands
        transport: Any = self._writer.transport
        done: asyncio.Future[None] = self._loop.create_future()
        protocol = _FrameProtocol(
            self, transport, on_items, done, pause_above, budget, frame_timeout_s
        )
        # Bytes the StreamReader already holds (they came with the handshake) go first.
        buffered = bytes(reader._buffer)
        reader._buffer.clear()
        if getattr(reader, "_paused", False):
            reader._paused = False
            transport.resume_reading()
        transport.set_protocol(protocol)
        if buffered:
            protocol.data_received(buffered)
        if reader.at_eof() or reader.exception() is not None:
            protocol.eof_received()
        await done

    def decode(self, body: bytes | memoryview) -> list[In]:
        try:
            return self._decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None

    def close(self) -> None:
        self._flush()
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()


class _FrameProtocol(asyncio.Protocol, Generic[In]):
    """:meth:`FrameChannel.serve`'s reading end: frames parsed in ``data_received``.

    It takes the transport over from the StreamReaderProtocol, which it keeps for the
    writer's flow control (``drain``) and for ``connection_lost``.
    """

    def __init__(
        self,
        channel: FrameChannel[In, Any],
        transport: Any,
        on_items: Callable[[list[In]], None],
        done: asyncio.Future[None],
        pause_above: int | None,
        budget: FrameBudget | None = None,
        frame_timeout_s: float | None = None,
    ) -> None:
        self._budget = budget
        self._charged = 0  #: bytes of an unfinished frame counted against the budget
        self._frame_timeout_s = frame_timeout_s
        self._frame_timer: asyncio.TimerHandle | None = None
        self._channel = channel
        self._transport = transport
        self._stream_protocol: Any = transport.get_protocol()
        self._on_items = on_items
        self._done = done
        self._buf = bytearray()
        self._max = channel._max_frame
        self._pause_above = pause_above
        self._paused = False
        if pause_above is not None:
            transport.set_write_buffer_limits(high=pause_above)

    def _end(self, exc: BaseException | None) -> None:
        if self._done.done():
            return
        self._hold(0)
        # Read no further: what an unfinished frame held is given back now, not when the
        # transport and this protocol are collected (a peer may leave 60 MB behind).
        self._buf = bytearray()
        if exc is None:
            self._done.set_result(None)
        else:
            # Read no further; the socket stays open for the owner's last words (a Goodbye
            # saying what was wrong), and the owner closes it once serve() has raised.
            self._done.set_exception(exc)
            if not self._transport.is_closing():
                self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        buf = self._buf
        buf += data
        pos, end, size = 0, len(buf), _LENGTH.size
        try:
            while end - pos >= size:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length > self._max:
                    raise ProtocolError(f"frame of {length} bytes exceeds {self._max}")
                if end - pos - size < length:
                    break
                with memoryview(buf) as view:  # released before the buffer is cut
                    items = self._channel.decode(view[pos + size : pos + size + length])
                pos += size + length
                self._on_items(items)
                if self._done.done():
                    return
        except BaseException as exc:
            self._end(exc)
            return
        finally:
            if not self._done.done():
                del buf[:pos]
                if self._budget is not None or self._frame_timeout_s is not None:
                    self._hold(len(buf), progress=pos > 0)

    def _hold(self, unfinished: int, progress: bool = False) -> None:
        """Account for the ``unfinished`` bytes of a frame still arriving: against the
        budget, and on a timer that restarts each time a frame is complete."""
        budget = self._budget
        if budget is not None and unfinished != self._charged:
            budget.held += unfinished - self._charged
            self._charged = unfinished
            if unfinished and budget.held > budget.limit:
                self._end(
                    FrameBudgetExceeded(
                        f"unfinished frames on all connections hold over {budget.limit} bytes"
                    )
                )
                return
        timer = self._frame_timer
        if timer is not None and (progress or not unfinished):
            timer.cancel()
            timer = self._frame_timer = None
        if unfinished and timer is None and self._frame_timeout_s is not None:
            self._frame_timer = self._channel._loop.call_later(
                self._frame_timeout_s, self._frame_too_slow
            )

    def _frame_too_slow(self) -> None:
        self._frame_timer = None
        self._end(ProtocolError(f"a frame was not finished within {self._frame_timeout_s:g} s"))

    def eof_received(self) -> bool:
        if self._buf:
            self._end(TruncatedFrame("the peer closed in the middle of a frame"))
        else:
            self._end(None)
        # Keep our half open: the owner may still have last words (a Goodbye saying why)
        # and closes the socket itself once serve() has returned (every owner does).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset (the peer died with our data unread) ends reading like a close.
        self._hold(0)
        if self._buf:
            self._end(TruncatedFrame("the peer closed in the middle of a frame"))
        else:
            self._end(None)
        self._stream_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()
        if self._pause_above is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()  # its answers back up: read on once taken

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()


#: The supervisor's end receives ToSupervisor and sends ToShard; a shard's, the reverse.
SupervisorEnd = FrameChannel[ToSupervisor, ToShard]
ShardEnd = FrameChannel[ToShard, ToSupervisor]


def supervisor_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> SupervisorEnd:
    """The supervisor's end of a shard's socket."""
    return FrameChannel(reader, writer, ToSupervisor)


def shard_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ShardEnd:
    """A shard's end of its socket to the supervisor."""
    return FrameChannel(reader, writer, ToShard)
