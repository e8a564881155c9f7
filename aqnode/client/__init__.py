"""The Python client (SPEC section 4): ``Client`` (asyncio) and ``SyncClient`` (blocking).

The client keeps one long-lived ``Session`` stream per node. Calls made in the same
event-loop tick travel in one frame, and frames go out in call order, so a sender that
fires many ``enqueue`` calls without awaiting each one still gets FIFO and group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from aqnode import errors
from aqnode.api import Message
from aqnode.bus import Bus, EntityBus, Envelope, SendResult
from aqnode.client.status import Member, NodeStatus, ShardStatus, status_from_pb
from aqnode.util.batching import take_frame
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc

__all__ = ["Client", "Member", "NodeStatus", "ShardStatus", "SyncClient", "SyncEntityClient"]

T = TypeVar("T")
NO_TIMEOUT_WAIT_S = 3600.0  #: seconds; a wait with no timeout relies on the node's default
SEND_TIMEOUT_S = 30.0  #: seconds an enqueue waits for the node to acknowledge it
TIMEOUT_GRACE_S = 2.0  #: seconds the client waits past a timeout for the node to say so


class Client(Bus):
    """``async with Client("127.0.0.1:50051") as bus: await bus.enqueue(msg)``."""

    def __init__(self, address: str = "127.0.0.1:50051", *, auth_token: str | None = None) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AqNodeStub | None = None
        self._stream: Any = None
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[SendResult]] = {}
        self._outbox: list[pb.Call] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connect_lock = asyncio.Lock()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure_channel(self) -> pb_grpc.AqNodeStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.address,
                options=[
                    # Replies may be as large as the node's max_reply_bytes allows.
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", MAX_CALL_BYTES + FRAME_SLACK_BYTES),
                ],
            )
            self._stub = pb_grpc.AqNodeStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def connect(self) -> None:
        """Open the ``Session`` stream (sends do this themselves when needed)."""
        async with self._connect_lock:
            if self._stream is not None:
                return
            self._stream = self._ensure_channel().Session(metadata=self._metadata)
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._write(self._stream)),
                loop.create_task(self._read(self._stream)),
            ]

    async def close(self) -> None:
        if self._stream is not None:
            # A half-close first: the node finishes the stream, nothing is left pending.
            # A stream that never connected fails this in gRPC's own ways; it is being
            # thrown away either way, so there is nothing to report.
            with contextlib.suppress(Exception):
                await self._stream.done_writing()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        self._fail_all(errors.AqError("the client was closed", code=errors.UNAVAILABLE))
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def status(self, timeout: float = 5.0) -> NodeStatus:
        """The node's :class:`NodeStatus`: its shards, role, master, epoch and members.

        ``timeout`` is in seconds; an unreachable node raises ``AqError`` ``UNAVAILABLE``.
        """
        try:
            reply: pb.StatusReply = await self._ensure_channel().Status(
                pb.StatusRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self.address) from None
        return status_from_pb(reply)

    # ---- the stream -------------------------------------------------------------------

    async def _send(
        self, envelopes: list[Envelope], *, wait: bool, timeout: float | None
    ) -> list[SendResult]:
        for env in envelopes:
            _check_size(env)
        if self._stream is None:
            await self.connect()
        loop = asyncio.get_running_loop()
        timeout_ms = int(timeout * 1000) if timeout else 0
        futures = []
        call_ids = []
        for env in envelopes:
            call_id = next(self._ids)
            call_ids.append(call_id)
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
                )
            )
        self._outbox_ready.set()
        if timeout:
            limit = timeout + TIMEOUT_GRACE_S
        else:
            limit = NO_TIMEOUT_WAIT_S if wait else SEND_TIMEOUT_S
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), limit))
        except TimeoutError:
            for call_id in call_ids:
                self._futures.pop(call_id, None)
            if wait:
                raise errors.ReplyTimeout(
                    f"no answer from {self.address} within {limit:.1f}s; the message may still run"
                ) from None
            raise errors.AqError(
                f"{self.address} did not acknowledge within {limit:.0f}s; the message may or may "
                "not be enqueued: send it again with the same message_id to be sure",
                code=errors.UNAVAILABLE,
            ) from None

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
            self._broken(rpc_error(exc, self.address))
        except Exception as exc:
            # A write that fails because the node ended the stream: its status says why
            # (UNAUTHENTICATED, say), which the read side may not have seen yet.
            self._broken(
                await _ended_with(stream, self.address)
                or errors.AqError(
                    f"the stream to {self.address} failed: {exc}", code=errors.UNAVAILABLE
                )
            )

    async def _read(self, stream: Any) -> None:
        try:
            while True:
                frame = await stream.read()
                if frame is grpc.aio.EOF:
                    self._broken(
                        errors.AqError(f"{self.address} closed the stream", code=errors.UNAVAILABLE)
                    )
                    return
                for outcome in frame.outcomes:
                    future = self._futures.pop(outcome.call_id, None)
                    if future is not None and not future.done():
                        future.set_result(_result_from_pb(outcome))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._broken(rpc_error(exc, self.address))

    def _broken(self, error: errors.AqError) -> None:
        """The stream failed: fail what is in flight; the next send opens a new stream."""
        self._stream = None
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


#: bytes of payload one call may carry; the node's own max_payload_bytes (4 MiB by
#: default) is usually lower and refuses with PAYLOAD_TOO_LARGE itself
MAX_CALL_BYTES = 64 * 1024 * 1024
FRAME_BYTES = 8 * 1024 * 1024  #: payload bytes gathered into one ClientFrame
FRAME_SLACK_BYTES = 1024 * 1024  #: room for ids, names and framing around a payload


def _check_size(env: Envelope) -> None:
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
            outcome.message_id, True, outcome.reply, outcome.content_type or "application/msgpack"
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
    return SendResult(outcome.message_id, False, error=error)


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
        return errors.AqError(
            f"cannot reach an aqnode at {address} ({details}); is `aqnode serve` running there?",
            code=errors.UNAVAILABLE,
        )
    return errors.AqError(f"{address}: {code.name}: {details}", code=errors.INTERNAL)


STATUS_WAIT_S = 1.0  #: seconds to wait for an ended stream's status after a failed write


async def _ended_with(stream: Any, address: str) -> errors.AqError | None:
    """The error an ended stream's status carries, or None if it has none (yet)."""
    try:
        code = await asyncio.wait_for(stream.code(), STATUS_WAIT_S)
        if code == grpc.StatusCode.OK:
            return None
        return status_error(code, await stream.details(), await stream.trailing_metadata(), address)
    except Exception:  # no status to be had: the caller reports the write's own failure
        return None


_background: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, in a daemon thread, for every :class:`SyncClient`.

    gRPC's asyncio layer binds to the loop it first runs on; one shared loop that never
    closes keeps it from calling into a loop that is gone.
    """
    global _background
    with _background_lock:
        if _background is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="aqnode-client", daemon=True).start()
            _background = loop
        return _background


class SyncClient:
    """The blocking twin of :class:`Client`: same methods, run on a shared background loop."""

    def __init__(self, address: str = "127.0.0.1:50051", *, auth_token: str | None = None) -> None:
        self._loop = background_loop()
        self._closed = False
        self._client = self._run(_make_client(address, auth_token))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._run(self._client.close())

    def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        return self._run(self._client.enqueue(msg, message_id=message_id))

    def enqueue_many(
        self, msgs: Iterable[Message], *, message_ids: Iterable[str | None] | None = None
    ) -> list[str]:
        return self._run(self._client.enqueue_many(list(msgs), message_ids=message_ids))

    def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        return self._run(self._client.enqueue_and_wait(msg, timeout=timeout, message_id=message_id))

    def enqueue_raw(
        self,
        entity_type: str,
        message: str,
        entity_id: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return self._run(
            self._client.enqueue_raw(
                entity_type,
                message,
                entity_id,
                data,
                message_id=message_id,
                content_type=content_type,
            )
        )

    def enqueue_and_wait_raw(
        self,
        entity_type: str,
        message: str,
        entity_id: str,
        data: Mapping[str, Any] | bytes,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        return self._run(
            self._client.enqueue_and_wait_raw(
                entity_type,
                message,
                entity_id,
                data,
                timeout=timeout,
                message_id=message_id,
                content_type=content_type,
            )
        )

    def for_entity(self, entity_type: str, entity_id: str) -> SyncEntityClient:
        return SyncEntityClient(self, self._client.for_entity(entity_type, entity_id))

    def status(self, timeout: float = 5.0) -> NodeStatus:
        """The node's :class:`NodeStatus` (see :meth:`Client.status`)."""
        return self._run(self._client.status(timeout))


class SyncEntityClient:
    def __init__(self, owner: SyncClient, bus: EntityBus) -> None:
        self._owner = owner
        self._bus = bus

    def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        return self._owner._run(self._bus.enqueue(msg, message_id=message_id))

    def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        return self._owner._run(
            self._bus.enqueue_and_wait(msg, timeout=timeout, message_id=message_id)
        )

    def enqueue_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return self._owner._run(
            self._bus.enqueue_raw(message, data, message_id=message_id, content_type=content_type)
        )

    def enqueue_and_wait_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        return self._owner._run(
            self._bus.enqueue_and_wait_raw(
                message, data, timeout=timeout, message_id=message_id, content_type=content_type
            )
        )


async def _make_client(address: str, auth_token: str | None) -> Client:
    return Client(address, auth_token=auth_token)
