"""The sending API shared by the network client and a handler's ``ctx.bus`` (SPEC 4).

Subclasses only move envelopes: :meth:`Bus._send` takes a list of envelopes and returns
one :class:`SendResult` each. Turning typed messages into envelopes and replies back into
typed values (or errors) happens here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload

import msgspec

from aqnode import errors
from aqnode.api import Command, Message, Query, entity_type_of, id_field_of, reply_type_of
from aqnode.catalogue import JSON, MSGPACK
from aqnode.config import MAX_MS
from aqnode.wiretypes import to_msgpack

R = TypeVar("R")


class Envelope(msgspec.Struct, array_like=True):
    entity_type: str
    message: str
    entity_id: str  # "" = let the node read it from the payload's entity id field
    payload: bytes
    content_type: str = MSGPACK
    message_id: str = ""


class SendResult(msgspec.Struct, array_like=True):
    message_id: str
    ok: bool
    reply: bytes = b""
    content_type: str = MSGPACK
    error: dict[str, Any] | None = None
    #: cluster mode: the address of the entity's owner when another node answered
    owner: str = ""

    def raise_for_error(self) -> None:
        if not self.ok:
            raise errors.AqError.from_dict(self.error or {"message": "unknown failure"})


_encoder = msgspec.msgpack.Encoder()
_reply_decoders: dict[type[Message], msgspec.msgpack.Decoder[Any]] = {}


def envelope_of(msg: Message, message_id: str | None = None) -> Envelope:
    cls = type(msg)
    etype = entity_type_of(cls)
    if etype is None:
        raise TypeError(f"{cls.__qualname__} has no @entity_type; decorate it to send it")
    id_field = id_field_of(cls)
    entity_id = str(getattr(msg, id_field)) if id_field else ""
    _check_text("entity_id", entity_id)
    _check_text("message_id", message_id or "")
    return Envelope(etype, cls.__name__, entity_id, _encoded(msg), MSGPACK, message_id or "")


def _encoded(data: Any) -> bytes:
    """msgpack of ``data``; what cannot be encoded is INVALID_PAYLOAD, like at the node.

    A positional (``array_like``) struct that leaves a field ``UNSET`` (generated code
    does, for a default only the handler knows) is sent cut where that field starts,
    which msgspec alone refuses to encode (:func:`aqnode.wiretypes.to_msgpack`)."""
    try:
        try:
            return _encoder.encode(data)
        except TypeError:
            return to_msgpack(data)
    except RecursionError:
        problem = "it is nested too deeply to encode"
    except (OverflowError, TypeError, ValueError, UnicodeEncodeError) as exc:
        problem = f"it cannot be encoded ({type(exc).__name__}: {exc})"
    raise errors.ValidationFailed(f"the payload was not sent: {problem}")


def _check_text(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.ValidationFailed(
            f"{name} is not valid UTF-8 text ({exc.reason} at position {exc.start})", field=name
        ) from None


#: seconds; the longest ``timeout=`` a wait takes: what a `_ms` config key may be (the wire
#: carries milliseconds as uint32)
MAX_TIMEOUT_S = MAX_MS // 1000


def timeout_ms_of(timeout: float | None) -> int:
    """A wait's ``timeout=`` (seconds) as the wire's milliseconds; 0 = the entity type's
    ``reply_timeout_ms``. INVALID_PAYLOAD, before anything is sent, for anything but a
    positive finite number up to MAX_TIMEOUT_S."""
    if timeout is None:
        return 0
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_S  # also False for NaN
    ):
        raise errors.ValidationFailed(
            f"timeout={timeout!r} is not a number of seconds in (0, {MAX_TIMEOUT_S}]; "
            "leave it out for the entity type's reply_timeout_ms; nothing was sent",
            field="timeout",
        )
    return max(1, int(timeout * 1000))


def raw_envelope(
    entity_type: str,
    message: str,
    entity_id: str,
    data: Mapping[str, Any] | bytes,
    message_id: str | None = None,
    content_type: str | None = None,
) -> Envelope:
    if isinstance(data, bytes | bytearray):
        payload, ctype = bytes(data), content_type or JSON
    else:
        payload, ctype = _encoded(data), MSGPACK
    for name, value in (
        ("entity_type", entity_type),
        ("message", message),
        ("entity_id", str(entity_id)),
        ("message_id", message_id or ""),
        ("content_type", ctype),
    ):
        _check_text(name, value)
    return Envelope(entity_type, message, str(entity_id), payload, ctype, message_id or "")


def decode_reply(result: SendResult, reply_type: Any) -> Any:
    result.raise_for_error()
    if not result.reply:
        return None
    if result.content_type == JSON:
        return msgspec.json.decode(result.reply, type=reply_type)
    return msgspec.msgpack.decode(result.reply, type=reply_type)


def typed_decode(msg: Message, result: SendResult) -> Any:
    cls = type(msg)
    result.raise_for_error()
    if not result.reply:
        return None
    decoder = _reply_decoders.get(cls)
    if decoder is None:
        decoder = _reply_decoders[cls] = msgspec.msgpack.Decoder(reply_type_of(cls))
    try:
        return decoder.decode(result.reply)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        # The node checks replies against R, so this is a client whose R differs from
        # the handler's (another version of the message's module): still a typed error.
        raise errors.HandlerError(
            f"the reply to message {result.message_id} does not decode as "
            f"{getattr(reply_type_of(cls), '__qualname__', reply_type_of(cls))!s}: {exc}; "
            "do the client and the node import the same version of the message's module?",
            remote_type="aqnode.ReplyDecodeError",
            remote_message=str(exc),
        ) from None


class Bus(ABC):
    """Send messages; every method has the same meaning on the client and in a handler."""

    @abstractmethod
    async def _send(
        self, envelopes: list[Envelope], *, wait: bool, timeout: float | None
    ) -> list[SendResult]:
        """Submit envelopes in order; with ``wait``, each result carries the reply."""

    async def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        """Durably enqueue ``msg``; returns its message id. Does not wait for the handler."""
        (result,) = await self._send([envelope_of(msg, message_id)], wait=False, timeout=None)
        result.raise_for_error()
        return result.message_id

    async def enqueue_many(
        self, msgs: Iterable[Message], *, message_ids: Iterable[str | None] | None = None
    ) -> list[str]:
        """Enqueue many messages in order, in one round trip; raises the first refusal
        (the others are enqueued). ``message_ids`` gives idempotency keys, one per message."""
        msgs = list(msgs)
        ids = list(message_ids) if message_ids is not None else [None] * len(msgs)
        if len(ids) != len(msgs):
            raise ValueError(f"{len(msgs)} messages but {len(ids)} message_ids")
        envelopes = [envelope_of(m, i) for m, i in zip(msgs, ids, strict=True)]
        results = await self._send(envelopes, wait=False, timeout=None)
        for result in results:
            result.raise_for_error()
        return [r.message_id for r in results]

    @overload
    async def enqueue_and_wait(
        self, msg: Command[R], *, timeout: float | None = None, message_id: str | None = None
    ) -> R: ...

    @overload
    async def enqueue_and_wait(
        self, msg: Query[R], *, timeout: float | None = None, message_id: str | None = None
    ) -> R: ...

    @overload
    async def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any: ...

    async def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        """Enqueue ``msg`` and return the handler's reply, decoded to the message's ``R``."""
        envelope = envelope_of(msg, message_id)
        self._check_wait(envelope)
        (result,) = await self._send([envelope], wait=True, timeout=timeout)
        return typed_decode(msg, result)

    async def enqueue_raw(
        self,
        entity_type: str,
        message: str,
        entity_id: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Enqueue by name: ``data`` is a mapping, or JSON/msgpack bytes (``content_type``)."""
        envelope = raw_envelope(entity_type, message, entity_id, data, message_id, content_type)
        await self._check_raw(envelope)
        (result,) = await self._send([envelope], wait=False, timeout=None)
        result.raise_for_error()
        return result.message_id

    async def enqueue_and_wait_raw(
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
        """Enqueue by name and return the reply as plain data (dicts, lists, numbers)."""
        envelope = raw_envelope(entity_type, message, entity_id, data, message_id, content_type)
        await self._check_raw(envelope)
        self._check_wait(envelope)
        (result,) = await self._send([envelope], wait=True, timeout=timeout)
        return decode_reply(result, Any)

    def for_entity(self, entity_type: str, entity_id: str) -> EntityBus:
        """A handle bound to one entity; sends to any other entity are refused."""
        return EntityBus(self, entity_type, str(entity_id))

    def _check_wait(self, envelope: Envelope) -> None:  # noqa: B027 (a hook, empty by default)
        """Refuse a wait that can never end; the client has none, a handler's bus has."""

    async def _check_raw(self, envelope: Envelope) -> None:  # noqa: B027 (a hook, empty by default)
        """Check a raw payload before it is sent (the client's ``validate=True``)."""


class EntityBus:
    """``bus.for_entity(type, id)``: the same sends, checked against one entity."""

    def __init__(self, bus: Bus, entity_type: str, entity_id: str) -> None:
        self._bus = bus
        self.entity_type = entity_type
        self.entity_id = entity_id

    def _check(self, msg: Message) -> None:
        envelope = envelope_of(msg)
        if envelope.entity_type != self.entity_type or envelope.entity_id not in (
            "",
            self.entity_id,
        ):
            raise ValueError(
                f"{type(msg).__name__} addresses {envelope.entity_type}:{envelope.entity_id}, "
                f"not {self.entity_type}:{self.entity_id}"
            )

    async def enqueue(self, msg: Message, *, message_id: str | None = None) -> str:
        self._check(msg)
        return await self._bus.enqueue(msg, message_id=message_id)

    async def enqueue_and_wait(
        self, msg: Message, *, timeout: float | None = None, message_id: str | None = None
    ) -> Any:
        self._check(msg)
        return await self._bus.enqueue_and_wait(msg, timeout=timeout, message_id=message_id)

    async def enqueue_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return await self._bus.enqueue_raw(
            self.entity_type,
            message,
            self.entity_id,
            data,
            message_id=message_id,
            content_type=content_type,
        )

    async def enqueue_and_wait_raw(
        self,
        message: str,
        data: Mapping[str, Any] | bytes,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        return await self._bus.enqueue_and_wait_raw(
            self.entity_type,
            message,
            self.entity_id,
            data,
            timeout=timeout,
            message_id=message_id,
            content_type=content_type,
        )
