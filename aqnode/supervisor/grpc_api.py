"""The client API over gRPC: protobuf in, :class:`~aqnode.core.NodeCore` calls, protobuf out.

``Session`` is the fast path: a long-lived bidi stream whose frames carry batches of
calls; outcomes travel back batched too, each tagged with its ``call_id``. The unary
methods are for other languages and ad-hoc tools. Errors cross as the SPEC's codes.

A ``Session`` whose client does not read its answers is not read from either once they
back up (as the native protocol's connections), and a client that goes away is a normal
end of the call, not an error.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.catalogue import CONTENT_TYPES, JSON
from aqnode.registry import Snapshot, encode_snapshot
from aqnode.supervisor.core import Call, NodeCore
from aqnode.util.batching import take_frame
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc

log = logging.getLogger("aqnode.supervisor")

#: gRPC status per SPEC error code, for unary calls (the code itself is in the metadata).
STATUS_FOR_CODE: dict[str, grpc.StatusCode] = {
    errors.UNKNOWN_ENTITY_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UNKNOWN_MESSAGE: grpc.StatusCode.INVALID_ARGUMENT,
    errors.INVALID_PAYLOAD: grpc.StatusCode.INVALID_ARGUMENT,
    errors.QUEUE_DEPTH_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.WORKER_LIMIT_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.REDIS_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    errors.DRAINING: grpc.StatusCode.UNAVAILABLE,
    errors.REPLY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.INTERRUPTED: grpc.StatusCode.ABORTED,
    errors.HANDLER_ERROR: grpc.StatusCode.ABORTED,
    errors.SELF_WAIT: grpc.StatusCode.FAILED_PRECONDITION,
    errors.STALE_EPOCH: grpc.StatusCode.FAILED_PRECONDITION,
    errors.MASTER_REBUILDING: grpc.StatusCode.UNAVAILABLE,
    errors.FORWARD_HOPS_EXCEEDED: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    errors.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FRAME_REPLY_BYTES = 4 * 1024 * 1024  #: bytes of replies gathered into one ServerFrame
#: bytes of a Session's answers waiting to be written (or being written) above which the
#: node takes no further ClientFrame from that stream until the client has read them
SESSION_HIGH_WATER_BYTES = 8 * 1024 * 1024
#: the same bound in answers: an Outcome object weighs more in memory than its encoding
SESSION_HIGH_WATER_COUNT = 20_000
ERROR_METADATA = "aq-error-bin"  #: trailing metadata: the whole error as JSON
CODE_METADATA = "aq-code"  #: trailing metadata: the SPEC code alone


def envelope_from_pb(env: pb.Envelope) -> Envelope:
    return Envelope(
        env.entity_type,
        env.message,
        env.entity_id,
        env.payload,
        env.content_type or JSON,
        env.message_id,
    )


def failure_to_pb(error: dict[str, Any] | None) -> pb.Failure:
    error = error or {}
    return pb.Failure(
        code=str(error.get("code", errors.INTERNAL)),
        message=str(error.get("message", "")),
        remote_type=str(error.get("remote_type", "")),
        remote_message=str(error.get("remote_message", "")),
        remote_traceback=str(error.get("remote_traceback", "")),
        field=str(error.get("field", "")),
    )


def outcome_to_pb(call_id: int, result: SendResult) -> pb.Outcome:
    if result.ok:
        return pb.Outcome(
            call_id=call_id,
            message_id=result.message_id,
            ok=True,
            reply=result.reply,
            content_type=result.content_type,
            owner=result.owner,
        )
    return pb.Outcome(
        call_id=call_id,
        message_id=result.message_id,
        ok=False,
        failure=failure_to_pb(result.error),
        owner=result.owner,
    )


class AqNodeService(pb_grpc.AqNodeServicer):
    def __init__(
        self, core: NodeCore, status: Callable[[], pb.StatusReply], auth_token: str | None
    ) -> None:
        self._core = core
        self._status = status
        self._token = auth_token

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await authenticate(context, self._token)

    async def _one(self, envelope: Envelope, wait: bool, timeout_ms: int) -> SendResult:
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()

        def reply(result: SendResult) -> None:
            if not future.done():
                future.set_result(result)

        self._core.submit([Call(envelope, wait, timeout_ms, reply)])
        return await future

    async def Enqueue(self, request: pb.EnqueueRequest, context: Any) -> pb.EnqueueReply:
        await self._authenticate(context)
        result = await self._one(envelope_from_pb(request.envelope), False, 0)
        if not result.ok:
            await abort(context, result.error)
        return pb.EnqueueReply(message_id=result.message_id)

    async def EnqueueMany(
        self, request: pb.EnqueueManyRequest, context: Any
    ) -> pb.EnqueueManyReply:
        await self._authenticate(context)
        envelopes = [envelope_from_pb(e) for e in request.envelopes]
        results: list[SendResult | None] = [None] * len(envelopes)
        left = asyncio.get_running_loop().create_future()
        remaining = [len(envelopes)]

        def reply_at(i: int) -> Callable[[SendResult], None]:
            def reply(result: SendResult) -> None:
                results[i] = result
                remaining[0] -= 1
                if remaining[0] == 0 and not left.done():
                    left.set_result(None)

            return reply

        if envelopes:
            self._core.submit([Call(e, False, 0, reply_at(i)) for i, e in enumerate(envelopes)])
            await left
        return pb.EnqueueManyReply(
            outcomes=[outcome_to_pb(i, r) for i, r in enumerate(results) if r is not None]
        )

    async def EnqueueAndWait(
        self, request: pb.EnqueueAndWaitRequest, context: Any
    ) -> pb.EnqueueAndWaitReply:
        await self._authenticate(context)
        result = await self._one(envelope_from_pb(request.envelope), True, request.timeout_ms)
        if not result.ok:
            await abort(context, result.error)
        return pb.EnqueueAndWaitReply(
            message_id=result.message_id, reply=result.reply, content_type=result.content_type
        )

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        await self._authenticate(context)
        return self._status()

    async def Registry(self, request: pb.RegistryRequest, context: Any) -> pb.RegistryReply:
        """The registry (SPEC 11): JSON as ``aqnode introspect --json`` prints it, or the
        msgpack snapshot with wire descriptions (the client's ``validate=True``)."""
        await self._authenticate(context)
        content_type = request.content_type or JSON
        if content_type not in CONTENT_TYPES:
            await abort(
                context,
                errors.ValidationFailed(
                    f"content type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}",
                    field="content_type",
                ).to_dict(),
            )
        registry = self._core.registry
        snapshot = await registry.snapshot() if registry is not None else Snapshot(groups=())
        if content_type == JSON:
            data = json.dumps(snapshot.introspect(), sort_keys=True).encode()
        else:
            data = encode_snapshot(snapshot)
        return pb.RegistryReply(registry=data, content_type=content_type)

    async def Session(self, request_iterator: AsyncIterator[pb.ClientFrame], context: Any) -> None:
        """The bidi stream, with the reader-writer API (a coroutine, not a generator): a
        write that fails because the client went away is caught here, and ends the call
        quietly instead of as an ERROR logged by grpc."""
        refusal = unauthenticated(context, self._token)
        if refusal is not None:
            # Every call is answered UNAUTHENTICATED on the open stream. Ending the stream
            # at once raced with the client's writes: it then saw a transport error
            # (INTERNAL, "UNAVAILABLE" to it) instead of the reason, about 3 % of the time.
            # One frame is read per frame written: a client that does not read is not read.
            error = refusal.to_dict()
            async for frame in request_iterator:
                await _write(
                    context,
                    pb.ServerFrame(
                        outcomes=[
                            outcome_to_pb(
                                c.call_id, SendResult(c.envelope.message_id, False, error=error)
                            )
                            for c in frame.calls
                        ]
                    ),
                )
            return
        await _Session(self._core, request_iterator, context).run()


class _Session:
    """One authenticated ``Session`` stream: a reader that submits each ClientFrame's
    calls, and the writer (the handler's own task) that sends their outcomes back.

    Backpressure, as :meth:`FrameChannel.serve` does for the native protocol: while more
    than :data:`SESSION_HIGH_WATER_BYTES` (or :data:`SESSION_HIGH_WATER_COUNT` outcomes)
    of answers wait to be written, or are being written, the reader takes no further
    frame; gRPC's flow control then stops the client's sends. Every call already
    submitted is still answered, in the order its answer came, once the client reads."""

    def __init__(
        self,
        core: NodeCore,
        request_iterator: AsyncIterator[pb.ClientFrame],
        context: Any,
    ) -> None:
        self._core = core
        self._requests = request_iterator
        self._context = context
        self._outbox: list[tuple[pb.Outcome, int]] = []  #: answers, with their sizes
        self._ready = asyncio.Event()  #: an answer came, or reading ended
        self._room = asyncio.Event()  #: the answers pending are back under the bounds
        self._room.set()
        self._pending_bytes = 0  #: of the answers in the outbox or being written
        self._pending_count = 0
        self._outstanding = 0  #: calls submitted and not answered yet
        self._closed = False  #: the client's half of the stream has ended
        self._error: BaseException | None = None

    def _full(self) -> bool:
        return (
            self._pending_bytes > SESSION_HIGH_WATER_BYTES
            or self._pending_count > SESSION_HIGH_WATER_COUNT
        )

    def _reply_for(self, call_id: int) -> Callable[[SendResult], None]:
        def reply(result: SendResult) -> None:
            outcome = outcome_to_pb(call_id, result)
            size = _reply_size(outcome)
            self._outbox.append((outcome, size))
            self._pending_bytes += size
            self._pending_count += 1
            self._outstanding -= 1
            self._ready.set()

        return reply

    async def _read(self) -> None:
        try:
            async for frame in self._requests:
                calls = [
                    Call(
                        envelope_from_pb(c.envelope),
                        c.wait,
                        c.timeout_ms,
                        self._reply_for(c.call_id),
                        epoch=c.epoch,
                        hops=c.hops,
                        adopted=c.assigned,
                        adopted_last=c.assigned_last,
                        fencing_token=c.fencing_token,
                    )
                    for c in frame.calls
                ]
                self._outstanding += len(calls)
                self._core.submit(calls)
                # The next frame waits until the client has taken enough of the answers.
                while self._full():
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # an undecodable frame, or a bug: end the stream, say why
            self._error = exc
        finally:
            self._closed = True
            self._ready.set()

    async def run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._outbox:
                    batch = take_frame(self._outbox, _sized_size, FRAME_REPLY_BYTES)
                    await _write(
                        self._context, pb.ServerFrame(outcomes=[outcome for outcome, _ in batch])
                    )
                    self._pending_bytes -= sum(size for _, size in batch)
                    self._pending_count -= len(batch)
                    if not self._full():
                        self._room.set()
                if self._error is not None:
                    try:
                        await abort(self._context, _stream_error(self._error))
                    except grpc.aio.InternalError as exc:
                        _client_gone(exc, self._pending_count)
                if self._closed and self._outstanding <= 0 and not self._outbox:
                    return
        finally:
            reader.cancel()


async def _write(context: Any, frame: pb.ServerFrame) -> None:
    """Write one ServerFrame; it waits while gRPC's flow control holds it (a client that
    does not read). A write that fails means the client went away (it cancelled, or its
    connection ended): the call ends as cancelled, which grpc logs at DEBUG only."""
    try:
        await context.write(frame)
    except grpc.aio.InternalError as exc:  # ExecuteBatchError: the stream is gone
        _client_gone(exc, len(frame.outcomes))


def _client_gone(exc: BaseException, unsent: int) -> NoReturn:
    log.debug(
        "a Session's client went away with %d answers unsent (%s: %s)",
        unsent,
        type(exc).__name__,
        exc,
    )
    raise asyncio.CancelledError from None


def _sized_size(item: tuple[pb.Outcome, int]) -> int:
    return item[1]


async def authenticate(context: grpc.aio.ServicerContext[Any, Any], token: str | None) -> None:
    """End the call with UNAUTHENTICATED unless it carries the node's token (if any)."""
    refusal = unauthenticated(context, token)
    if refusal is not None:
        await abort(context, refusal.to_dict())


def unauthenticated(
    context: grpc.aio.ServicerContext[Any, Any], token: str | None
) -> errors.AqError | None:
    """The UNAUTHENTICATED error if the call lacks the node's token (constant-time check)."""
    if token is None:
        return None
    metadata = dict(context.invocation_metadata() or ())
    given = str(metadata.get("authorization", ""))
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    return errors.AqError(
        "this node requires an auth token: send 'authorization: Bearer <token>'",
        code=errors.UNAUTHENTICATED,
    )


def _reply_size(outcome: pb.Outcome) -> int:
    return int(outcome.ByteSize())  # the reply, and failure texts, which can be large too


def _stream_error(exc: BaseException) -> dict[str, Any]:
    return errors.AqError(
        f"the Session stream failed: a ClientFrame could not be read ({type(exc).__name__}: "
        f"{exc}); the calls answered so far stand, resend the others",
        code=errors.INVALID_PAYLOAD,
    ).to_dict()


#: bytes of each text field of an error that go into gRPC metadata: gRPC may refuse
#: more than 8 KiB of metadata (base64 makes binary values a third larger), and a refused
#: error would lose its code. The full texts still go to the log and the dead letter.
METADATA_TEXT_LIMITS = {"message": 500, "remote_message": 500, "remote_traceback": 2500}


async def abort(context: Any, error: dict[str, Any] | None) -> None:
    error = _bounded(error or {"code": errors.INTERNAL, "message": "unknown failure"})
    code = str(error.get("code", errors.INTERNAL))
    await context.abort(
        STATUS_FOR_CODE.get(code, grpc.StatusCode.INTERNAL),
        f"{code}: {error.get('message', '')}",
        trailing_metadata=(
            (CODE_METADATA, code),
            (ERROR_METADATA, json.dumps(error, ensure_ascii=False).encode()),
        ),
    )


def _bounded(error: dict[str, Any]) -> dict[str, Any]:
    """The error with long texts cut (saying so), small enough for gRPC metadata: limits
    in UTF-8 bytes, so that no alphabet makes it larger."""
    bounded = dict(error)
    for key, value in list(bounded.items()):
        if isinstance(value, str):
            bounded[key] = _cut(value, METADATA_TEXT_LIMITS.get(key, 200))
    return bounded


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}... [{len(data) - limit} more bytes cut]"
