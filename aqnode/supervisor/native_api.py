"""The node's end of the native protocol (:mod:`aqnode.native`): the Python client's fast
path, on the node's Unix socket and optionally on TCP (``native_listen``, TLS with
``[tls]``). Every call goes to the same :meth:`NodeCore.submit` as a gRPC ``Session``
call, so validation, limits, idempotency and replies are the same.

No client input ends or wedges the supervisor: a connection that does not say Hello in
time, sends an undecodable or oversized frame, or a wrong token is told why
(:class:`~aqnode.native.Goodbye`) and closed; the others go on. A client that stops
reading is not read from either once its replies back up (the socket's buffer is
drained before the next frame is taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from aqnode import errors
from aqnode.bus import SendResult
from aqnode.ipc import FrameBudget, FrameBudgetExceeded, FrameChannel, ProtocolError
from aqnode.native import (
    HELLO_TIMEOUT_S,
    PROTOCOL,
    Answer,
    AskRegistry,
    AskStatus,
    Goodbye,
    Hello,
    RegistryAnswer,
    Send,
    StatusAnswer,
    ToClient,
    ToNode,
    Welcome,
)
from aqnode.registry import Snapshot, encode_snapshot
from aqnode.supervisor.core import NodeCore
from aqnode.supervisor.live import Call
from aqnode.v1 import aqnode_pb2 as pb

log = logging.getLogger("aqnode.supervisor")

#: bytes of replies waiting in a connection's socket buffer before the node stops reading
#: that connection's calls until the client has taken them
WRITE_HIGH_WATER = 8 * 1024 * 1024
HELLO_FRAME_BYTES = 64 * 1024  #: the largest first frame: before Hello, nobody is trusted
FRAME_TIMEOUT_S = 60.0  #: seconds a frame may take to arrive once begun
#: unfinished frames all connections may hold together, in frames of the largest size
FRAME_BUDGET_FRAMES = 4

Channel = FrameChannel[ToNode, ToClient]


class NativeServer:
    def __init__(
        self,
        core: NodeCore,
        status: Callable[[], pb.StatusReply],
        server_id: str,
        auth_token: str | None,
        max_frame: int,
    ) -> None:
        self._core = core
        self._status = status
        self._server_id = server_id
        self._token = auth_token
        self._max_frame = max_frame
        self._budget = FrameBudget(max(FRAME_BUDGET_FRAMES * max_frame, 256 * 1024 * 1024))
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._asks: set[asyncio.Task[None]] = set()  #: registry reads under way
        self.socket_path: Path | None = None
        self.tcp_address = ""

    async def start_unix(self, path: Path) -> None:
        """Listen on ``path`` (a stale socket file there is replaced: the node holds its
        data_dir, so no other node uses it)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self._accept, path=str(path))
        os.chmod(path, 0o600)  # this user's processes only, like the managed Redis
        self._servers.append(server)
        self.socket_path = path

    async def start_tcp(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        server = await asyncio.start_server(self._accept, host, port, ssl=context)
        self._servers.append(server)
        self.tcp_address = f"{host}:{port}"

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        channel: Channel = FrameChannel(reader, writer, ToNode, self._max_frame)
        try:
            await self._serve(channel, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug: this connection ends, the node goes on
            log.exception("native connection failed")
        finally:
            self._connections.discard(task)
            channel.close()

    async def _serve(self, channel: Channel, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(channel.receive(HELLO_FRAME_BYTES), HELLO_TIMEOUT_S)
        except TimeoutError:
            return self._goodbye(channel, errors.Unavailable("no Hello in time: closing"))
        except ProtocolError as exc:
            return self._goodbye(channel, _bad_frame(exc))
        if not first:
            return None
        hello = first[0]
        if not isinstance(hello, Hello):
            return self._goodbye(
                channel, errors.ValidationFailed("a native connection starts with Hello")
            )
        if hello.protocol != PROTOCOL:
            return self._goodbye(
                channel,
                errors.ValidationFailed(
                    f"protocol {hello.protocol} is not this node's ({PROTOCOL}): upgrade the "
                    "client or the node"
                ),
            )
        if self._token is not None and not hmac.compare_digest(
            hello.token.encode(), self._token.encode()
        ):
            return self._goodbye(
                channel,
                errors.AqError(
                    "this node requires an auth token: pass auth_token= (or --auth-token)",
                    code=errors.UNAUTHENTICATED,
                ),
            )
        channel.send(Welcome(PROTOCOL, self._server_id))
        self._take(channel, first[1:])
        try:
            # Frames are taken as they arrive, in data_received; reading pauses while
            # its answers back up (a client that does not read them).
            await channel.serve(
                lambda items: self._take(channel, items),
                pause_above=WRITE_HIGH_WATER,
                budget=self._budget,
                frame_timeout_s=FRAME_TIMEOUT_S,
            )
        except FrameBudgetExceeded as exc:
            return self._goodbye(
                channel,
                errors.Unavailable(
                    f"the node is short of memory for unfinished frames ({exc}): this "
                    "connection is closed; resend its calls under the same message_id"
                ),
            )
        except ProtocolError as exc:
            return self._goodbye(channel, _bad_frame(exc))
        return None

    def _take(self, channel: Channel, items: list[ToNode]) -> None:
        calls: list[Call] = []
        for item in items:
            if isinstance(item, Send):
                calls.append(
                    Call(item.envelope, item.wait, item.timeout_ms, _Reply(channel, item.call_id))
                )
            elif isinstance(item, AskStatus):
                if calls:  # keep the order of what came before it
                    self._core.submit(calls)
                    calls = []
                status = self._status().SerializeToString()
                channel.send(StatusAnswer(item.request_id, status))
            elif isinstance(item, AskRegistry):
                task = asyncio.get_running_loop().create_task(
                    self._registry(channel, item.request_id)
                )
                self._asks.add(task)
                task.add_done_callback(self._asks.discard)
            # a second Hello is ignored: the connection is already open
        if calls:
            self._core.submit(calls)

    async def _registry(self, channel: Channel, request_id: int) -> None:
        registry = self._core.registry
        try:
            snapshot = await registry.snapshot() if registry is not None else Snapshot(groups=())
        except errors.AqError as exc:
            answer = RegistryAnswer(request_id, error=exc.to_dict())
        else:
            answer = RegistryAnswer(request_id, encode_snapshot(snapshot))
        if not channel.closed:
            channel.send(answer)

    def _goodbye(self, channel: Channel, error: errors.AqError) -> None:
        channel.send(Goodbye(error.to_dict()))


class _Reply:
    """A call's answer, back to the connection it came on.

    One small object per call rather than a closure (a function, its cells and their
    tuple): it lives as long as the message is unanswered, and the cyclic collector
    walks every container that does."""

    __slots__ = ("call_id", "channel")

    def __init__(self, channel: Channel, call_id: int) -> None:
        self.channel = channel
        self.call_id = call_id

    def __call__(self, result: SendResult) -> None:
        channel = self.channel
        if not channel.closed:  # a client that went away: its answers have nowhere to go
            # The first answer of a loop iteration goes out at once: a client awaiting one
            # call at a time sends its next one sooner; the rest of the tick's answers share
            # one frame after it.
            channel.send_now(Answer(self.call_id, result))


def _bad_frame(exc: ProtocolError) -> errors.AqError:
    return errors.ValidationFailed(f"the node could not read a frame: {exc}; closing")
