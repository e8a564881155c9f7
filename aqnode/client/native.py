"""One node over the native protocol (:mod:`aqnode.native`): the same interface as
:class:`aqnode.client.connection.Connection` (gRPC), so the routing :class:`Client`
uses either.

Calls posted before the connection is open wait in order and go out right after the
node's Welcome; calls of one event-loop tick share one frame. A connection that breaks
fails every call in flight with ``UNAVAILABLE`` (resend under the same ``message_id``);
the next post opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl
import stat

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.client.connection import NO_MARKS, ForwardMarks
from aqnode.client.status import NodeStatus, status_from_pb
from aqnode.client.tls import Tls
from aqnode.ipc import FrameChannel, ProtocolError
from aqnode.native import (
    CLIENT_FRAME_BYTES,
    PROTOCOL,
    TCP_SCHEME,
    UNIX_SCHEME,
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
from aqnode.util.hostport import parse_host_port
from aqnode.util.loops import LoopRef
from aqnode.v1 import aqnode_pb2 as pb

#: seconds to open the socket and hear the node's Welcome
OPEN_TIMEOUT_S = 5.0

Channel = FrameChannel[ToClient, ToNode]


class NativeConnection:
    native = True  #: the native protocol (SyncClient may open a blocking twin)

    def __init__(self, address: str, token: str | None = None, tls: Tls | None = None) -> None:
        self.address = address
        self._token = token or ""
        self._tls = tls
        self._channel: Channel | None = None  #: set once the node said Welcome
        self._opening: asyncio.Task[None] | None = None
        self._outbox: list[ToNode] = []  #: posted before the Welcome, in order
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[SendResult]] = {}
        self._asks: dict[int, asyncio.Future[StatusAnswer | RegistryAnswer]] = {}
        self._loop = LoopRef()
        self.failures = 0  #: connections that broke since the last answer
        self.server_id = ""

    @property
    def connected(self) -> bool:
        """Welcomed, and the socket not closed."""
        return self._channel is not None and not self._channel.closed

    @property
    def open(self) -> bool:
        return self._opening is not None

    @property
    def idle(self) -> bool:
        return not self._futures

    async def ready(self, timeout: float) -> None:
        """Wait until the node said Welcome; TimeoutError after ``timeout`` or if the
        connection failed (the calls posted meanwhile carry the reason)."""
        self.connect()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._channel is None:
            if self._opening is None or asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.address} is not connected")
            await asyncio.sleep(0.01)

    def connect(self) -> None:
        """Start opening the connection if it is not open (no await: posts keep their
        order behind it)."""
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._run())

    def post(
        self,
        envelopes: list[Envelope],
        *,
        wait: bool,
        timeout_ms: int = 0,
        marks: ForwardMarks = NO_MARKS,
    ) -> list[asyncio.Future[SendResult]]:
        if marks != NO_MARKS:
            raise ValueError("forwarded calls travel over gRPC, not the native protocol")
        self.connect()
        loop = self._loop.get()
        futures = []
        for env in envelopes:
            call_id = next(self._ids)
            future: asyncio.Future[SendResult] = loop.create_future()
            self._futures[call_id] = future
            futures.append(future)
            self._put(Send(call_id, env, wait, timeout_ms), alone=len(envelopes) == 1)
        return futures

    def forget(self, futures: list[asyncio.Future[SendResult]]) -> None:
        dropped = set(map(id, futures))
        for call_id, future in list(self._futures.items()):
            if id(future) in dropped:
                del self._futures[call_id]

    async def status(self, timeout: float) -> NodeStatus:
        answer = await self._ask(AskStatus(next(self._ids)), timeout)
        assert isinstance(answer, StatusAnswer)
        reply = pb.StatusReply()
        reply.ParseFromString(answer.status)
        return status_from_pb(reply)

    async def registry(self, timeout: float) -> bytes:
        """The node's registry snapshot (msgpack), for ``validate=True``."""
        answer = await self._ask(AskRegistry(next(self._ids)), timeout)
        assert isinstance(answer, RegistryAnswer)
        if answer.error is not None:
            raise errors.AqError.from_dict(answer.error)
        return answer.registry

    async def _ask(
        self, item: AskStatus | AskRegistry, timeout: float
    ) -> StatusAnswer | RegistryAnswer:
        self.connect()
        future: asyncio.Future[StatusAnswer | RegistryAnswer] = (
            asyncio.get_running_loop().create_future()
        )
        self._asks[item.request_id] = future
        self._put(item)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._asks.pop(item.request_id, None)
            raise errors.Unavailable(f"{self.address} did not answer in time") from None

    async def close(self) -> None:
        opening = self.drop()
        if opening is not None:
            await asyncio.gather(opening, return_exceptions=True)

    def drop(self) -> asyncio.Task[None] | None:
        """Close without waiting (from a task being cancelled): the connection's task is
        cancelled and closes its socket when it runs next; returned for those who wait."""
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
        self._fail_all(errors.Unavailable("the client was closed"))
        return opening

    # ---- the connection ---------------------------------------------------------------

    def _put(self, item: ToNode, alone: bool = False) -> None:
        channel = self._channel
        if channel is None or channel.closed:
            self._outbox.append(item)
        elif alone:
            channel.send_now(item)
        else:
            channel.send(item)

    async def _run(self) -> None:
        channel: Channel | None = None
        try:
            channel = await asyncio.wait_for(self._open(), OPEN_TIMEOUT_S)
            self._channel = channel
            outbox, self._outbox = self._outbox, []
            for queued in outbox:
                channel.send(queued)
            await channel.serve(self._take)  # answers resolve their calls in data_received
            raise errors.Unavailable(f"{self.address} closed the connection")
        except asyncio.CancelledError:
            raise
        except errors.AqError as exc:
            self._broken(exc)
        except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
            self._broken(_unreachable(self.address, exc))
        finally:
            if channel is not None:
                channel.close()
            if self._channel is channel:
                self._channel = None

    async def _open(self) -> Channel:
        if self.address.startswith(UNIX_SCHEME):
            reader, writer = await asyncio.open_unix_connection(self.address[len(UNIX_SCHEME) :])
        else:
            host, port = parse_host_port(self.address[len(TCP_SCHEME) :])
            context = None if self._tls is None else self._tls.ssl_context()
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
        channel: Channel = FrameChannel(reader, writer, ToClient, CLIENT_FRAME_BYTES)
        try:
            channel.send(Hello(PROTOCOL, self._token))
            items = await channel.receive()
            if not items:
                raise errors.Unavailable(f"{self.address} closed the connection before Welcome")
            first = items[0]
            if isinstance(first, Goodbye):
                raise errors.AqError.from_dict(first.error)
            if not isinstance(first, Welcome):
                raise errors.Unavailable(f"{self.address} does not speak the native protocol")
        except BaseException:  # refused, broken, timed out or cancelled: no socket left open
            channel.close()
            raise
        self.server_id = first.server_id
        for item in items[1:]:
            self._deliver(item)
        return channel

    def _take(self, items: list[ToClient]) -> None:
        self.failures = 0
        for item in items:
            self._deliver(item)

    def _deliver(self, item: ToClient) -> None:
        if isinstance(item, Answer):
            future = self._futures.pop(item.call_id, None)
            if future is not None and not future.done():
                future.set_result(item.result)
        elif isinstance(item, StatusAnswer | RegistryAnswer):
            ask = self._asks.pop(item.request_id, None)
            if ask is not None and not ask.done():
                ask.set_result(item)
        elif isinstance(item, Goodbye):
            raise errors.AqError.from_dict(item.error)

    def _broken(self, error: errors.AqError) -> None:
        """Fail what is in flight; the next post opens a new connection."""
        self._opening = None
        self.failures += 1
        self._outbox.clear()  # their futures fail below: they must not go out later
        self._fail_all(error)

    def _fail_all(self, error: errors.AqError) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_result(SendResult("", False, error=error.to_dict()))
        asks, self._asks = self._asks, {}
        for ask in asks.values():
            if not ask.done():
                ask.set_exception(error)


def candidates(grpc_address: str, socket: str, tcp: str) -> list[str]:
    """Where to try a node's native protocol, best first: its Unix socket when that path
    is a socket on this host (the Welcome's server id then proves it is the same node),
    then its TCP address, with a wildcard host replaced by the one ``grpc_address`` dials."""
    found = []
    if socket.startswith(UNIX_SCHEME):
        path = socket[len(UNIX_SCHEME) :]
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode) and os.access(path, os.R_OK | os.W_OK):
                found.append(socket)
    if tcp.startswith(TCP_SCHEME):
        host, port = parse_host_port(tcp[len(TCP_SCHEME) :])
        if host in ("0.0.0.0", "::", ""):
            host = parse_host_port(grpc_address)[0]
        found.append(
            f"{TCP_SCHEME}[{host}]:{port}" if ":" in host else f"{TCP_SCHEME}{host}:{port}"
        )
    return found


def _unreachable(address: str, exc: BaseException) -> errors.AqError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLError):
        return errors.Unavailable(
            f"cannot reach an aqnode at {address} (the TLS handshake failed: {detail}); does "
            "the client trust the node's CA, and present a certificate if it requires one?"
        )
    return errors.Unavailable(
        f"cannot reach an aqnode at {address} ({detail}); is `aqnode serve` running there, "
        "with that native address?"
    )
