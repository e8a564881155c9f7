"""The supervisor <-> shard framing (aqnode.ipc.FrameChannel) over real socket pairs.

Every test runs on the stock asyncio loop and on uvloop (the loop every aqnode process
uses). The far end is either another FrameChannel, an asyncio stream written with raw
bytes, or a bare socket (to leave data unread and so make the kernel reset the link).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
import uvloop

from aqnode import ipc
from aqnode.ipc import MAX_FRAME_BYTES, FrameChannel, ProtocolError

T = TypeVar("T")
Run = Callable[[Callable[[], Awaitable[T]]], T]

_HEADER = struct.Struct(">I")
_TIMEOUT_S = 2.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run[Any]]:
    """Run a coroutine function to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(main(), _TIMEOUT_S)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    yield runner


def frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


class Streams:
    """Both ends of a socket pair: a FrameChannel on ``a``, raw asyncio streams on ``b``."""

    channel: FrameChannel[Any, Any]
    reader: asyncio.StreamReader
    peer_reader: asyncio.StreamReader
    peer_writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, incoming: Any = ipc.ToSupervisor) -> Streams:
        self = cls()
        a, b = socket.socketpair()
        self.reader, writer = await asyncio.open_unix_connection(sock=a)
        self.channel = FrameChannel(self.reader, writer, incoming)
        self.peer_reader, self.peer_writer = await asyncio.open_unix_connection(sock=b)
        return self

    async def peer_frame(self) -> list[Any]:
        """One frame as the peer sees it, decoded as things sent to the shard."""
        (length,) = _HEADER.unpack(await self.peer_reader.readexactly(_HEADER.size))
        body = await self.peer_reader.readexactly(length)
        return msgspec.msgpack.Decoder(list[ipc.ToShard]).decode(body)

    async def close(self) -> None:
        self.channel.close()
        self.peer_writer.close()
        for closing in (self.channel._writer, self.peer_writer):
            with contextlib.suppress(ConnectionError):
                await closing.wait_closed()


async def channel_pair() -> tuple[ipc.SupervisorEnd, ipc.ShardEnd]:
    """(supervisor end, shard end) as the node wires them."""
    a, b = socket.socketpair()
    sup = ipc.supervisor_end(*(await asyncio.open_unix_connection(sock=a)))
    shard = ipc.shard_end(*(await asyncio.open_unix_connection(sock=b)))
    return sup, shard


async def close_all(*channels: FrameChannel[Any, Any]) -> None:
    for channel in channels:
        channel.close()
    for channel in channels:
        with contextlib.suppress(ConnectionError):
            await channel._writer.wait_closed()


# ---- round trips ---------------------------------------------------------------------


def test_several_item_kinds_make_the_round_trip_in_one_frame(run: Run[Any]) -> None:
    error = {"code": "HANDLER_ERROR", "message": "boom", "remote_type": "ValueError"}
    to_sup = [
        ipc.Hello(ipc.PROTOCOL_VERSION, 3, 4242),
        ipc.Ready(),
        ipc.Dispatch("m-1"),
        ipc.Outcome("m-1", True, b"\x81\xa1k\xa1v", None, 1.5, 0.25),
        ipc.Outcome("m-2", False, error=error),
        ipc.Retry("m-3", error),
        ipc.WorkerGone("order:é:1"),
        ipc.Submit(7, "order", "Pay", "o1", b"\x00\xff", True, 1000, "m-4", "cart:c1"),
        ipc.Heartbeat(2, 5, 100),
    ]
    to_shard = [
        ipc.Welcome(ipc.PROTOCOL_VERSION, 3, 4, b"cfg\x00"),
        ipc.Deliver("m-1", "order", "Pay", "o1", b"\x90", 1700000000.5, 2, True),
        ipc.DispatchResult("m-1", False, error, True),
        ipc.RetryResult("m-3", True),
        ipc.SubmitResult(7, True, "m-4", b"\xc0"),
        ipc.Stop(250),
    ]

    async def main() -> tuple[Any, Any]:
        sup, shard = await channel_pair()
        for item in to_sup:
            shard.send(item)
        for item in to_shard:
            sup.send(item)
        got = (await sup.receive(), await shard.receive())
        await close_all(sup, shard)
        return got

    at_sup, at_shard = run(main)
    assert at_sup == to_sup
    assert at_shard == to_shard


def test_defaults_are_filled_in_on_the_receiving_side(run: Run[Any]) -> None:
    async def main() -> Any:
        sup, shard = await channel_pair()
        shard.send(ipc.Outcome("m-1", True))
        got = await sup.receive()
        await close_all(sup, shard)
        return got

    assert run(main) == [ipc.Outcome("m-1", True, b"", None, 0.0, 0.0)]


def test_many_sends_in_one_loop_tick_go_out_as_one_frame(run: Run[Any]) -> None:
    items = [ipc.Stop(i) for i in range(50)]

    async def main() -> tuple[list[Any], bytes]:
        s = await Streams.open()
        for item in items:
            s.channel.send(item)
        first = await s.peer_frame()
        s.channel.close()
        rest = await s.peer_reader.read()  # to EOF: nothing else was written
        await s.close()
        return first, rest

    first, rest = run(main)
    assert first == items
    assert rest == b""


def test_sends_in_different_ticks_go_out_as_separate_frames(run: Run[Any]) -> None:
    async def main() -> list[list[Any]]:
        s = await Streams.open()
        s.channel.send(ipc.Stop(1))
        s.channel.send(ipc.Stop(2))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        s.channel.send(ipc.Stop(3))
        frames = [await s.peer_frame(), await s.peer_frame()]
        await s.close()
        return frames

    assert run(main) == [[ipc.Stop(1), ipc.Stop(2)], [ipc.Stop(3)]]


def test_send_now_writes_a_lone_item_before_the_loop_turns_and_queues_the_rest(
    run: Run[Any],
) -> None:
    """A lone item is in the kernel when send_now returns (True: no confirm() needed);
    what the same tick sends after it, by send or send_now, shares one frame behind it;
    after an item queued by send, send_now queues too (order kept) and says so."""

    async def main() -> dict[str, Any]:
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        channel: FrameChannel[Any, Any] = FrameChannel(reader, writer, ipc.ToSupervisor)
        b.setblocking(False)
        seen: dict[str, Any] = {"lone": channel.send_now(ipc.Stop(1))}
        seen["raw"] = b.recv(1 << 16)  # no await since: the write was not deferred
        seen["second"] = channel.send_now(ipc.Stop(2))  # the same tick: queued behind it
        channel.send(ipc.Stop(3))
        peer = Streams()
        peer.peer_reader, peer_writer = await asyncio.open_unix_connection(sock=b)
        seen["tick1"] = await peer.peer_frame()
        await asyncio.sleep(0)
        channel.send(ipc.Stop(4))
        seen["after_send"] = channel.send_now(ipc.Stop(5))
        seen["tick2"] = await peer.peer_frame()
        channel.close()
        peer_writer.close()
        return seen

    seen = run(main)
    assert seen["lone"] is True
    assert seen["raw"] == frame(msgspec.msgpack.encode([ipc.Stop(1)]))
    assert seen["second"] is False and seen["tick1"] == [ipc.Stop(2), ipc.Stop(3)]
    assert seen["after_send"] is False and seen["tick2"] == [ipc.Stop(4), ipc.Stop(5)]


def test_send_now_says_false_while_a_peer_that_does_not_read_backs_the_bytes_up(
    run: Run[Any],
) -> None:
    """A shard runs a handler only once its Started is in the kernel: when the peer does
    not read and the socket's buffer is full, send_now must say False (the item waits in
    our buffer), and confirm() must resolve only once the peer has read it."""

    async def main() -> tuple[int, bool, bool, int]:
        s = await Streams.open()
        chunk = b"x" * 65536
        in_kernel_sends = 0
        while s.channel.send_now(chunk):  # one per tick, the peer reads nothing
            in_kernel_sends += 1
            assert in_kernel_sends < 1000, "the socket never backed up"
            await asyncio.sleep(0)
        confirmed = s.channel.confirm()
        done, _ = await asyncio.wait([confirmed], timeout=0.2)
        early = bool(done)
        received = 0

        async def read_all() -> None:  # the peer reads now: the bytes drain
            nonlocal received
            while data := await s.peer_reader.read(1 << 20):
                received += len(data)

        reading = asyncio.ensure_future(read_all())
        await asyncio.wait_for(confirmed, _TIMEOUT_S)
        s.channel.close()
        await asyncio.wait_for(reading, _TIMEOUT_S)
        await s.close()
        return in_kernel_sends, early, confirmed.done(), received

    in_kernel_sends, early, confirmed, received = run(main)
    assert in_kernel_sends >= 1  # the first ones went straight to the kernel
    assert not early  # nothing was confirmed while the peer read nothing
    assert confirmed and received > (in_kernel_sends + 1) * 65536  # every byte arrived


def test_the_header_is_the_big_endian_length_of_the_msgpack_body(run: Run[Any]) -> None:
    async def main() -> bytes:
        s = await Streams.open()
        s.channel.send(ipc.Stop(5))
        await s.channel.drain()
        s.channel.close()
        raw = await s.peer_reader.read()
        await s.close()
        return raw

    raw = run(main)
    body = msgspec.msgpack.encode([ipc.Stop(5)])
    assert raw == struct.pack(">I", len(body)) + body
    assert msgspec.msgpack.decode(body) == [["Stop", 5]]


def test_close_flushes_items_queued_in_the_same_tick(run: Run[Any]) -> None:
    async def main() -> tuple[Any, Any]:
        sup, shard = await channel_pair()
        shard.send(ipc.Heartbeat(1, 2, 3))
        shard.close()
        got = (await sup.receive(), await sup.receive())
        await close_all(sup, shard)
        return got

    assert run(main) == ([ipc.Heartbeat(1, 2, 3)], None)


# ---- closes ----------------------------------------------------------------------------


def test_a_clean_close_between_frames_is_none(run: Run[Any]) -> None:
    async def main() -> tuple[Any, Any]:
        s = await Streams.open()
        s.peer_writer.write(frame(msgspec.msgpack.encode([ipc.Ready()])))
        s.peer_writer.close()
        got = (await s.channel.receive(), await s.channel.receive())
        await s.close()
        return got

    assert run(main) == ([ipc.Ready()], None)


def test_a_close_before_any_frame_is_none(run: Run[Any]) -> None:
    async def main() -> Any:
        s = await Streams.open()
        s.peer_writer.close()
        got = await s.channel.receive()
        await s.close()
        return got

    assert run(main) is None


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00\x00"])
def test_a_peer_closing_in_the_middle_of_a_header_is_a_protocol_error(
    run: Run[Any], partial: bytes
) -> None:
    async def main() -> None:
        s = await Streams.open()
        s.peer_writer.write(partial)
        s.peer_writer.close()
        try:
            with pytest.raises(ProtocolError, match="header"):
                await s.channel.receive()
        finally:
            await s.close()

    run(main)


@pytest.mark.parametrize("sent_of_body", [0, 1, 9])
def test_a_peer_closing_in_the_middle_of_a_body_is_a_protocol_error(
    run: Run[Any], sent_of_body: int
) -> None:
    body = msgspec.msgpack.encode([ipc.Dispatch("m-1")])
    assert len(body) > 9

    async def main() -> None:
        s = await Streams.open()
        s.peer_writer.write(frame(body)[: _HEADER.size + sent_of_body])
        s.peer_writer.close()
        try:
            with pytest.raises(ProtocolError, match="in the middle of a frame"):
                await s.channel.receive()
        finally:
            await s.close()

    run(main)


def test_a_frame_after_a_good_one_that_is_cut_short_is_a_protocol_error(
    run: Run[Any],
) -> None:
    good = frame(msgspec.msgpack.encode([ipc.Ready()]))
    cut = frame(msgspec.msgpack.encode([ipc.Dispatch("m-1")]))[:-1]

    async def main() -> Any:
        s = await Streams.open()
        s.peer_writer.write(good + cut)
        s.peer_writer.close()
        first = await s.channel.receive()
        try:
            with pytest.raises(ProtocolError):
                await s.channel.receive()
        finally:
            await s.close()
        return first

    assert run(main) == [ipc.Ready()]


# ---- frame size ----------------------------------------------------------------------


def test_a_header_over_max_frame_bytes_is_refused_without_reading_the_body(
    run: Run[Any],
) -> None:
    async def main() -> bytes:
        s = await Streams.open()
        # The peer stays open and sends a few body bytes: had receive() tried to read a
        # body of that size it would hang (and the runner's time-out would fail the test).
        s.peer_writer.write(_HEADER.pack(MAX_FRAME_BYTES + 1) + b"rest")
        await s.peer_writer.drain()
        try:
            with pytest.raises(ProtocolError, match="exceeds"):
                await s.channel.receive()
            return await s.reader.readexactly(4)  # still unread
        finally:
            await s.close()

    assert run(main) == b"rest"


def test_the_largest_header_4gib_is_refused_too(run: Run[Any]) -> None:
    async def main() -> None:
        s = await Streams.open()
        s.peer_writer.write(b"\xff\xff\xff\xff")
        try:
            with pytest.raises(ProtocolError, match="exceeds"):
                await s.channel.receive()
        finally:
            await s.close()

    run(main)


def test_a_header_of_exactly_max_frame_bytes_is_accepted_and_its_body_read(
    run: Run[Any],
) -> None:
    async def main() -> None:
        s = await Streams.open()
        s.peer_writer.write(_HEADER.pack(MAX_FRAME_BYTES) + b"\x90")
        s.peer_writer.close()
        try:
            # not "exceeds": the size passes, and the body is then found cut short
            with pytest.raises(ProtocolError, match="in the middle of a frame"):
                await s.channel.receive()
        finally:
            await s.close()

    run(main)


# ---- undecodable bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1", id="reserved-msgpack-byte"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b"\x93\x91\xa5Ready", id="array-shorter-than-announced"),
        pytest.param(msgspec.msgpack.encode([ipc.Ready()]) + b"\x00", id="trailing-bytes"),
        pytest.param(msgspec.msgpack.encode({"items": []}), id="a-map-not-an-array"),
        pytest.param(msgspec.msgpack.encode([ipc.Welcome(1, 0, 1, b"")]), id="other-way-tag"),
        pytest.param(msgspec.msgpack.encode([["Nope", 1]]), id="unknown-tag"),
        pytest.param(msgspec.msgpack.encode([[1, 2]]), id="no-tag"),
        pytest.param(msgspec.msgpack.encode([["Hello", 1]]), id="missing-field"),
        pytest.param(msgspec.msgpack.encode([["Hello", "1", 0, 0]]), id="wrong-field-type"),
    ],
)
def test_an_undecodable_body_is_a_protocol_error(run: Run[Any], body: bytes) -> None:
    async def main() -> None:
        s = await Streams.open(ipc.ToSupervisor)
        s.peer_writer.write(frame(body))
        await s.peer_writer.drain()
        try:
            with pytest.raises(ProtocolError, match="undecodable frame"):
                await s.channel.receive()
        finally:
            await s.close()

    run(main)


# ---- resets --------------------------------------------------------------------------


async def _reset_pair() -> tuple[FrameChannel[Any, Any], asyncio.StreamReader, socket.socket]:
    """A channel whose bare peer socket holds unread data, so that closing the peer makes
    the kernel report ECONNRESET (not EOF) on the channel's side."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    channel = FrameChannel(reader, writer, ipc.ToSupervisor)
    channel.send(ipc.Stop(1))
    await channel.drain()
    return channel, reader, b


def test_a_reset_between_frames_is_none_as_documented_in_receive(run: Run[Any]) -> None:
    async def main() -> Any:
        channel, reader, peer = await _reset_pair()
        peer.sendall(frame(msgspec.msgpack.encode([ipc.Ready()])))
        peer.close()
        got = (await channel.receive(), await channel.receive(), reader.exception())
        await close_all(channel)
        return got

    first, second, cause = run(main)
    assert (first, second) == ([ipc.Ready()], None)
    assert isinstance(cause, ConnectionResetError)  # a reset indeed, not an EOF


def test_a_reset_in_the_middle_of_a_body_is_a_protocol_error(run: Run[Any]) -> None:
    body = msgspec.msgpack.encode([ipc.Dispatch("m-1")])

    async def main() -> BaseException | None:
        channel, reader, peer = await _reset_pair()
        peer.sendall(frame(body)[:-3])
        peer.close()
        try:
            with pytest.raises(ProtocolError, match="in the middle of a frame"):
                await channel.receive()
            return reader.exception()
        finally:
            await close_all(channel)

    assert isinstance(run(main), ConnectionResetError)  # a reset indeed, not an EOF


def test_sending_after_close_is_dropped_quietly(run: Run[Any]) -> None:
    async def main() -> bool:
        s = await Streams.open()
        s.channel.close()
        s.channel.send(ipc.Stop(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        closed = s.channel.closed
        assert await s.peer_reader.read() == b""
        await s.close()
        return closed

    assert run(main) is True


# ---- serve(): frames handled in data_received ----------------------------------------


async def _serve_collect(
    s: Streams, wire: bytes, *, chunk: int = 0, before: bool = False
) -> tuple[list[list[Any]], BaseException | None]:
    """Feed ``wire`` from the peer (``chunk`` bytes per write, 0: at once; ``before``:
    written and read into the StreamReader before serve() starts), then close; what
    serve() handed over, and what it raised."""
    frames: list[list[Any]] = []
    if before:
        s.peer_writer.write(wire)
        await s.peer_writer.drain()
        while len(s.reader._buffer) < len(wire):  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
        s.peer_writer.write_eof()
    serving = asyncio.ensure_future(s.channel.serve(frames.append))
    if not before:
        step = chunk or len(wire) or 1
        with contextlib.suppress(ConnectionError):  # serve() may end (and close) first
            for start in range(0, len(wire), step):
                s.peer_writer.write(wire[start : start + step])
                await s.peer_writer.drain()
                await asyncio.sleep(0)
            s.peer_writer.write_eof()
    try:
        await serving
        error: BaseException | None = None
    except BaseException as exc:
        error = exc
    await s.close()
    return frames, error


def _wire(*items: list[Any]) -> bytes:
    return b"".join(frame(msgspec.msgpack.encode(i)) for i in items)


SERVE_FRAMES = [
    [ipc.Dispatch("m-1"), ipc.Heartbeat(1, 2, 3)],
    [ipc.Outcome("m-1", True, b"\x00" * 3000)],
    [ipc.WorkerGone("k")],
]


@pytest.mark.parametrize("chunk", [0, 1, 3, 7, 4096])
def test_serve_hands_over_each_frame_whole_however_the_bytes_arrive(
    run: Run[Any], chunk: int
) -> None:
    async def main() -> tuple[list[list[Any]], BaseException | None]:
        return await _serve_collect(await Streams.open(), _wire(*SERVE_FRAMES), chunk=chunk)

    frames, error = run(main)
    assert error is None
    assert frames == SERVE_FRAMES


def test_serve_takes_the_bytes_the_stream_reader_already_holds(run: Run[Any]) -> None:
    async def main() -> tuple[list[list[Any]], BaseException | None]:
        return await _serve_collect(await Streams.open(), _wire(*SERVE_FRAMES), before=True)

    frames, error = run(main)
    assert error is None
    assert frames == SERVE_FRAMES


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (_wire(SERVE_FRAMES[0]) + b"\x00\x00", ipc.TruncatedFrame),
        (_wire(SERVE_FRAMES[0]) + frame(b"\x93\x01")[:-1], ipc.TruncatedFrame),
        (_HEADER.pack(MAX_FRAME_BYTES + 1) + b"xx", ProtocolError),
        (frame(b"\xc1"), ProtocolError),
        (frame(msgspec.msgpack.encode([["NotAnItem", 1]])), ProtocolError),
    ],
)
def test_serve_ends_on_a_cut_oversized_or_undecodable_frame(
    run: Run[Any], wire: bytes, kind: type[BaseException]
) -> None:
    async def main() -> tuple[list[list[Any]], BaseException | None]:
        return await _serve_collect(await Streams.open(), wire, chunk=1)

    frames, error = run(main)
    assert isinstance(error, kind), error
    assert frames in ([], [SERVE_FRAMES[0]])  # only the whole frames before it


def test_serve_raises_what_its_callback_raised_and_reads_no_further(run: Run[Any]) -> None:
    """Reading stops at the failing frame, and the socket stays open for the owner's last
    words (the native server's Goodbye saying what was wrong): the peer reads them, then
    the end, once the owner closes the channel."""

    async def main() -> tuple[list[list[Any]], BaseException | None, bool, list[Any], bytes]:
        s = await Streams.open()
        seen: list[list[Any]] = []

        def take(items: list[Any]) -> None:
            seen.append(items)
            raise KeyError("a bug in the callback")

        s.peer_writer.write(_wire(*SERVE_FRAMES))
        try:
            await s.channel.serve(take)
            error: BaseException | None = None
        except BaseException as exc:
            error = exc
        open_after = not s.channel.closed
        s.channel.send(ipc.Stop(9))  # the owner's last words
        s.channel.close()
        last = await s.peer_frame()
        rest = await s.peer_reader.read()
        await s.close()
        return seen, error, open_after, last, rest

    seen, error, open_after, last, rest = run(main)
    assert isinstance(error, KeyError)
    assert seen == [SERVE_FRAMES[0]]
    assert open_after and last == [ipc.Stop(9)] and rest == b""  # then the end


def test_serve_pauses_reading_while_answers_back_up(run: Run[Any]) -> None:
    """A peer that writes calls but never reads the answers: with ``pause_above`` the
    reading stops, so the answers do not pile up without bound."""

    async def main() -> int:
        s = await Streams.open()
        handled = 0
        answer = ipc.Deliver("m", "t", "M", "e", b"\x00" * 60_000, 0.0, 1, True)

        def take(items: list[Any]) -> None:
            nonlocal handled
            handled += len(items)
            s.channel.send(answer)

        serving = asyncio.ensure_future(s.channel.serve(take, pause_above=256 * 1024))
        one = _wire([ipc.Dispatch("m")])
        for _ in range(2000):  # the peer never reads
            s.peer_writer.write(one)
        for _ in range(50):
            await asyncio.sleep(0.01)
        stuck_at = handled
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        s.channel._writer.transport.abort()
        s.peer_writer.transport.abort()
        return stuck_at

    handled = run(main)
    assert 0 < handled < 2000


@pytest.mark.parametrize(
    "bad",
    [
        ipc.Outcome("m-bad", False, error={"message": "lone \ud800 surrogate"}),
        ipc.Submit(1, "t", "M", "e", b"", True, 10**30),
        ipc.Outcome("m-bad", False, error={"message": object()}),
    ],
    ids=["surrogate", "int-over-64-bits", "unencodable-object"],
)
def test_an_item_that_cannot_be_encoded_fails_its_sender_and_spares_the_frame(
    run: Run[Any], bad: Any
) -> None:
    """Items are encoded when sent: a bad one raises to its own sender, queues nothing,
    and the items of other senders in the same tick still go out in their frame."""
    before = [ipc.Stop(1), ipc.Stop(2)]
    after = [ipc.Stop(3)]

    async def main() -> tuple[list[Any], BaseException | None]:
        s = await Streams.open()
        for item in before:
            s.channel.send(item)
        raised: BaseException | None = None
        try:
            s.channel.send(bad)
        except ipc.FrameEncodeError as exc:
            raised = exc
        with pytest.raises(ipc.FrameEncodeError):
            s.channel.send_all([ipc.Stop(9), bad])  # all or none: Stop(9) never goes
        for item in after:
            s.channel.send(item)
        frame = await s.peer_frame()
        s.channel.close()
        await s.close()
        return frame, raised

    frame, raised = run(main)
    assert isinstance(raised, ipc.FrameEncodeError), raised
    assert type(bad).__name__ in str(raised)
    assert frame == before + after


def test_a_frame_of_many_encoded_items_decodes_as_one_array(run: Run[Any]) -> None:
    """The array header the channel writes itself, for 15, 16 and 65,536 items."""
    for count in (15, 16, 65_536):
        items = [ipc.Stop(i) for i in range(count)]

        async def main(items: list[Any] = items) -> list[Any]:
            s = await Streams.open()
            s.channel.send_all(items)
            frame = await s.peer_frame()
            s.channel.close()
            await s.close()
            return frame

        assert run(main) == items, count


# ---- serve(): limits on unfinished frames (an untrusted peer) -------------------------


def test_a_frame_that_is_not_finished_in_time_ends_the_connection(run: Run[Any]) -> None:
    """Whole frames keep the connection; a begun frame that stalls ends it, and what it
    held is given back to the budget."""
    budget = ipc.FrameBudget(1 << 20)

    async def main() -> tuple[list[list[Any]], BaseException | None, int]:
        s = await Streams.open()
        frames: list[list[Any]] = []
        serving = asyncio.ensure_future(
            s.channel.serve(frames.append, budget=budget, frame_timeout_s=0.3)
        )
        s.peer_writer.write(_wire(SERVE_FRAMES[0]))
        s.peer_writer.write(_HEADER.pack(1000) + b"\x91")  # begun, never finished
        await s.peer_writer.drain()
        while budget.held == 0 and not serving.done():
            await asyncio.sleep(0.01)
        held = budget.held
        protocol = s.channel._writer.transport.get_protocol()
        try:
            await asyncio.wait_for(serving, 10)
            error: BaseException | None = None
        except BaseException as exc:
            error = exc
        assert len(protocol._buf) == 0, "the unfinished frame's bytes are still held"
        await s.close()
        return frames, error, held

    frames, error, held = run(main)
    assert frames == [SERVE_FRAMES[0]]
    assert held == _HEADER.size + 1
    assert isinstance(error, ProtocolError) and "not finished within" in str(error), error
    assert budget.held == 0


def test_frames_that_keep_completing_are_never_timed_out(run: Run[Any]) -> None:
    """The timer bounds one frame, not a connection: a peer whose frames each end in the
    next write is read on, however long the whole stream takes."""
    wire = _wire(*[SERVE_FRAMES[1]] * 12)
    step = 1500  # each write ends inside a frame of ~3 kB

    async def main() -> tuple[int, BaseException | None]:
        s = await Streams.open()
        frames: list[list[Any]] = []
        serving = asyncio.ensure_future(s.channel.serve(frames.append, frame_timeout_s=0.5))
        for start in range(0, len(wire), step):
            s.peer_writer.write(wire[start : start + step])
            await s.peer_writer.drain()
            await asyncio.sleep(0.04)  # 12 frames over ~1 s: the stream outlasts the timer
        s.peer_writer.write_eof()
        try:
            await serving
            error: BaseException | None = None
        except BaseException as exc:
            error = exc
        await s.close()
        return len(frames), error

    count, error = run(main)
    assert error is None
    assert count == 12


def test_unfinished_frames_past_the_shared_budget_end_the_connection_over_it(
    run: Run[Any],
) -> None:
    budget = ipc.FrameBudget(10_000)

    async def main() -> tuple[BaseException | None, BaseException | None, int]:
        first, second = await Streams.open(), await Streams.open()
        serving = [
            asyncio.ensure_future(s.channel.serve(lambda _items: None, budget=budget))
            for s in (first, second)
        ]
        first.peer_writer.write(_HEADER.pack(50_000) + b"\x00" * 6_000)
        await first.peer_writer.drain()
        while budget.held < 6_000:
            await asyncio.sleep(0.01)
        second.peer_writer.write(_HEADER.pack(50_000) + b"\x00" * 6_000)
        await second.peer_writer.drain()
        errors: list[BaseException | None] = []
        done, _ = await asyncio.wait(serving, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for task in serving:
            errors.append(task.exception() if task in done else None)
        still_held = budget.held
        for s in (first, second):
            await s.close()
        await asyncio.gather(*serving, return_exceptions=True)
        return errors[0], errors[1], still_held

    first_error, second_error, held = run(main)
    assert first_error is None  # the connection within the budget reads on
    assert isinstance(second_error, ipc.FrameBudgetExceeded), second_error
    assert held <= 6_000 + _HEADER.size


def test_a_greeting_frame_over_its_own_limit_is_refused_before_its_body(run: Run[Any]) -> None:
    async def main() -> BaseException | None:
        s = await Streams.open()
        s.peer_writer.write(_HEADER.pack(1_000_000))
        await s.peer_writer.drain()
        try:
            await asyncio.wait_for(s.channel.receive(max_frame=65_536), 10)
            error: BaseException | None = None
        except BaseException as exc:
            error = exc
        await s.close()
        return error

    error = run(main)
    assert isinstance(error, ProtocolError) and "65536" in str(error), error
