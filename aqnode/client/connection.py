"""One node's ``Session`` stream: the wire under :class:`~aqnode.client.Client`, and
under a cluster node forwarding calls to an entity's owner.

Calls posted in the same event-loop tick travel in one frame, and frames go out in post
order, so a sender that posts many calls without awaiting each one keeps its order
and gets group commit. When the stream fails, every call in flight fails with
``UNAVAILABLE`` (resend under the same ``message_id``) and the next post opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import grpc

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.client.status import NodeStatus, status_from_pb
from aqnode.util.batching import take_frame
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc

#: bytes of payload one call may carry; the node's own max_payload_bytes (4 MiB by
#: default) is usually lower and refuses with PAYLOAD_TOO_LARGE itself
MAX_CALL_BYTES = 64 * 1024 * 1024
FRAME_BYTES = 8 * 1024 * 1024  #: payload bytes gathered into one ClientFrame
FRAME_SLACK_BYTES = 1024 * 1024  #: room for ids, names and framing around a payload
STATUS_WAIT_S = 1.0  #: seconds to wait for an ended stream's status after a failed write
CLOSE_WAIT_S = 1.0  #: seconds a closing connection waits for its half-close to go out


@dataclass(frozen=True, slots=True)
class ForwardMarks:
    """What a node forwarding a call to the entity's owner adds to it (cluster mode; a
    client sends none): its epoch and the hops so far, and, for a message the master
    moves from a dead node (adoption), that the receiver owns the entity now, whether
    this is its last moved message, and the entity's fencing token there."""

    epoch: int
    hops: int
    assigned: bool = False
    assigned_last: bool = False
    fencing_token: int = 0


NO_MARKS = ForwardMarks(0, 0)


class Connection:
    """A channel and one long-lived ``Session`` stream to one node."""

    native = False  #: a gRPC stream, not the native protocol

    def __init__(
        self,
        address: str,
        metadata: tuple[tuple[str, str], ...] = (),
        options: list[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self._metadata = metadata
        self._options = options or []
        self._credentials = credentials  #: TLS; None: plaintext
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AqNodeStub | None = None
        self._stream: Any = None
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[SendResult]] = {}
        self._outbox: list[pb.Call] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0  #: streams that broke since the last answer (for callers' health)

    @property
    def channel(self) -> grpc.aio.Channel:
        self._ensure_channel()
        assert self._channel is not None
        return self._channel

    @property
    def open(self) -> bool:
        return self._stream is not None

    @property
    def idle(self) -> bool:
        """No call of this connection waits for its answer."""
        return not self._futures

    def _ensure_channel(self) -> pb_grpc.AqNodeStub:
        if self._stub is None:
            options = [
                # Replies may be as large as the node's max_reply_bytes allows.
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", MAX_CALL_BYTES + FRAME_SLACK_BYTES),
                # A node that restarts is found again within a second, not after
                # gRPC's default backoff (up to two minutes).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                *self._options,
            ]
            self._channel = (
                grpc.aio.insecure_channel(self.address, options=options)
                if self._credentials is None
                else grpc.aio.secure_channel(self.address, self._credentials, options=options)
            )
            self._stub = pb_grpc.AqNodeStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def ready(self, timeout: float) -> None:
        """Wait until the node's channel is connected; TimeoutError after ``timeout``."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    def connect(self) -> None:
        """Open the stream if it is not open (no await: posts stay in call order)."""
        if self._stream is not None:
            return
        self._stream = self._ensure_channel().Session(metadata=self._metadata)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write(self._stream)),
            loop.create_task(self._read(self._stream)),
        ]

    def post(
        self,
        envelopes: list[Envelope],
        *,
        wait: bool,
        timeout_ms: int = 0,
        marks: ForwardMarks = NO_MARKS,
    ) -> list[asyncio.Future[SendResult]]:
        """Queue ``envelopes`` on the stream, in order; one future each."""
        self.connect()
        loop = asyncio.get_running_loop()
        futures = []
        for env in envelopes:
            call_id = next(self._ids)
            future: asyncio.Future[SendResult] = loop.create_future()
            self._futures[call_id] = future
            futures.append(future)
            self._outbox.append(
                pb.Call(
                    call_id=call_id,
                    envelope=pb.Envelope(
                        entity_type=env.entity_type,
                        message=env.message,
                        entity_id=env.entity_id,
                        payload=env.payload,
                        content_type=env.content_type,
                        message_id=env.message_id,
                    ),
                    wait=wait,
                    timeout_ms=timeout_ms,
                    epoch=marks.epoch,
                    hops=marks.hops,
                    assigned=marks.assigned,
                    assigned_last=marks.assigned_last,
                    fencing_token=marks.fencing_token,
                )
            )
        self._outbox_ready.set()
        return futures

    def forget(self, futures: list[asyncio.Future[SendResult]]) -> None:
        """Stop tracking calls whose caller gave up on them (their outcome is dropped)."""
        dropped = set(map(id, futures))
        for call_id, future in list(self._futures.items()):
            if id(future) in dropped:
                del self._futures[call_id]

    async def status(self, timeout: float) -> NodeStatus:
        try:
            reply: pb.StatusReply = await self._ensure_channel().Status(
                pb.StatusRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self.address) from None
        return status_from_pb(reply)

    async def registry(self, timeout: float) -> bytes:
        """The node's ``Registry`` reply as msgpack (:class:`aqnode.registry.Snapshot`)."""
        try:
            reply: pb.RegistryReply = await self._ensure_channel().Registry(
                pb.RegistryRequest(content_type="application/msgpack"),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self.address) from None
        return bytes(reply.registry)

    async def close(self) -> None:
        if self._stream is not None:
            # A half-close first: the node finishes the stream, nothing is left pending.
            # A stream that never connected fails this in gRPC's own ways; it is being
            # thrown away either way, so there is nothing to report. The half-close waits
            # behind what is still being written: a node that reads nothing (paused,
            # wedged) would hold it for ever, so it gets CLOSE_WAIT_S, then the stream
            # is cancelled (the calls still pending fail as UNAVAILABLE below).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stream.done_writing(), CLOSE_WAIT_S)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        self._fail_all(errors.Unavailable("the client was closed"))
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def _write(self, stream: Any) -> None:
        try:
            while True:
                await self._outbox_ready.wait()
                self._outbox_ready.clear()
                while self._outbox:
                    calls: list[pb.Call] = take_frame(self._outbox, _payload_size, FRAME_BYTES)
                    await stream.write(pb.ClientFrame(calls=calls))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._broken(stream, rpc_error(exc, self.address))
        except Exception as exc:
            # A write that fails because the node ended the stream: its status says why
            # (UNAUTHENTICATED, say), which the read side may not have seen yet.
            self._broken(
                stream,
                await _ended_with(stream, self.address)
                or errors.Unavailable(f"the stream to {self.address} failed: {exc}"),
            )

    async def _read(self, stream: Any) -> None:
        try:
            while True:
                frame = await stream.read()
                if frame is grpc.aio.EOF:
                    self._broken(stream, errors.Unavailable(f"{self.address} closed the stream"))
                    return
                self.failures = 0
                for outcome in frame.outcomes:
                    future = self._futures.pop(outcome.call_id, None)
                    if future is not None and not future.done():
                        future.set_result(_result_from_pb(outcome))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._broken(stream, rpc_error(exc, self.address))

    def _broken(self, stream: Any, error: errors.AqError) -> None:
        """The stream failed: fail what is in flight; the next post opens a new one."""
        if stream is not self._stream:
            return  # an older stream's last words
        self._stream = None
        self.failures += 1
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        self._outbox.clear()  # their futures fail below: they must not go out later
        self._fail_all(error)

    def _fail_all(self, error: errors.AqError) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_result(SendResult("", False, error=error.to_dict()))


def check_size(env: Envelope) -> None:
    if len(env.payload) > MAX_CALL_BYTES:
        raise errors.PayloadTooLarge(
            f"the payload is {len(env.payload)} bytes, over the {MAX_CALL_BYTES} bytes one call "
            "can carry (the node's max_payload_bytes is likely lower still); nothing was sent"
        )


def _payload_size(call: pb.Call) -> int:
    return int(call.ByteSize())


def _result_from_pb(outcome: pb.Outcome) -> SendResult:
    if outcome.ok:
        return SendResult(
            outcome.message_id,
            True,
            outcome.reply,
            outcome.content_type or "application/msgpack",
            owner=outcome.owner,
        )
    f = outcome.failure
    error = {"code": f.code, "message": f.message}
    if f.field:
        error["field"] = f.field
    if f.remote_type or f.remote_traceback:
        error.update(
            remote_type=f.remote_type,
            remote_message=f.remote_message,
            remote_traceback=f.remote_traceback,
        )
    return SendResult(outcome.message_id, False, error=error, owner=outcome.owner)


#: gRPC codes without an aqnode error attached: the connection itself failed (a node that
#: died mid-stream shows up as INTERNAL "Internal error from Core", or CANCELLED).
_TRANSPORT_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}
)


def rpc_error(exc: grpc.aio.AioRpcError, address: str) -> errors.AqError:
    """A gRPC failure as an AqError: the node's own code when it sent one."""
    return status_error(exc.code(), exc.details() or "", exc.trailing_metadata(), address)


def status_error(
    code: grpc.StatusCode, details: str, metadata: Any, address: str
) -> errors.AqError:
    for key, value in metadata or ():
        if key == "aq-error-bin":
            raw = value if isinstance(value, bytes) else str(value).encode()
            return errors.AqError.from_dict(json.loads(raw))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.PayloadTooLarge(
            f"{address} refused the call as too large ({details}); send less"
        )
    if code in _TRANSPORT_FAILURES:
        lowered = details.lower()
        if "handshake" in lowered or "ssl" in lowered or "certificate" in lowered:
            hint = (
                "the TLS handshake failed: does the client trust the node's CA (tls=Tls("
                "ca_file=...), --tls-ca), and present a certificate if the node requires one?"
            )
        elif "socket closed" in lowered:
            hint = "is `aqnode serve` running there? If it speaks TLS, pass tls= (--tls-ca)"
        else:
            hint = "is `aqnode serve` running there?"
        return errors.Unavailable(f"cannot reach an aqnode at {address} ({details}); {hint}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"{address} did not answer in time ({details})")
    return errors.AqError(f"{address}: {code.name}: {details}", code=errors.INTERNAL)


async def _ended_with(stream: Any, address: str) -> errors.AqError | None:
    """The error an ended stream's status carries, or None if it has none (yet)."""
    try:
        code = await asyncio.wait_for(stream.code(), STATUS_WAIT_S)
        if code == grpc.StatusCode.OK:
            return None
        return status_error(code, await stream.details(), await stream.trailing_metadata(), address)
    except Exception:  # no status to be had: the caller reports the write's own failure
        return None
