"""Payload validation with types rebuilt from the message catalogue as data.

The supervisor never imports a handler module: the first shard to be ready sends the
message catalogue as data (:class:`aqnode.wiretypes.MessageEntry`), and every check here
uses msgspec types rebuilt from it. A user's ``__post_init__`` therefore runs in the
shard, when the message is decoded to run; if it raises, that message fails with
``HANDLER_ERROR`` (it was acknowledged, and is dead-lettered like any handler failure).

A shared module: the client (``Client(..., validate=True)``) runs the same checks on the
registry's entries (:mod:`aqnode.registry`), so it refuses what the node would refuse,
with the same error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from aqnode import errors
from aqnode.catalogue import CONTENT_TYPES, MSGPACK, lookup_in, short_repr
from aqnode.wiretypes import MessageEntry, rebuild, to_msgpack


@dataclass(frozen=True)
class WireSpec:
    """One message as the supervisor knows it: names and decoders, no user class."""

    entity_type: str
    name: str
    id_field: str
    json_decoder: msgspec.json.Decoder[Any]
    msgpack_decoder: msgspec.msgpack.Decoder[Any]

    @classmethod
    def of(cls, entry: MessageEntry) -> WireSpec:
        payload_type = rebuild(entry.payload)
        return cls(
            entry.entity_type,
            entry.name,
            entry.id_field,
            msgspec.json.Decoder(payload_type),
            msgspec.msgpack.Decoder(payload_type),
        )


class Validator:
    """entity type -> message name -> :class:`WireSpec`; checks a message as sent."""

    def __init__(self, entries: Iterable[MessageEntry] = ()) -> None:
        self.entries = list(entries)
        self.entity_types: dict[str, dict[str, WireSpec]] = {}
        for entry in self.entries:
            self.entity_types.setdefault(entry.entity_type, {})[entry.name] = WireSpec.of(entry)

    def lookup(self, entity_type: str, message: str) -> WireSpec:
        return lookup_in(self.entity_types, entity_type, message)

    def validate(
        self, entity_type: str, message: str, entity_id: str, payload: bytes, content_type: str
    ) -> tuple[WireSpec, str, bytes]:
        """Check a message as sent; return its spec, its entity id and canonical msgpack.

        Raises :class:`~aqnode.errors.ValidationFailed` with ``UNKNOWN_ENTITY_TYPE``,
        ``UNKNOWN_MESSAGE`` or ``INVALID_PAYLOAD`` (naming the field). Never anything else:
        whatever a decoder or encoder raises on hostile input is INVALID_PAYLOAD.
        """
        spec = self.lookup(entity_type, message)
        if content_type not in CONTENT_TYPES:
            raise errors.ValidationFailed(
                f"content type {short_repr(content_type)} is not one of {', '.join(CONTENT_TYPES)}"
            )
        where = f"{entity_type}.{message}"
        try:
            msg, canonical = _decode(spec, payload, content_type)
        except msgspec.ValidationError as exc:
            if not entity_id or f"missing required field `{spec.id_field}`" not in str(exc):
                raise errors.ValidationFailed(
                    f"{where}: {exc}", field=_field_of(str(exc))
                ) from None
            # The address names the entity: a payload without its id field takes it from
            # there (`aqnode enqueue account Deposit a-1 --data '{"amount": 5}'`).
            msg, canonical = self._with_id(spec, payload, content_type, entity_id, where)
        except msgspec.DecodeError as exc:
            raise errors.ValidationFailed(f"{where}: {exc}", field=_field_of(str(exc))) from None
        except RecursionError:
            raise errors.ValidationFailed(
                f"{where}: the payload is nested too deeply to decode"
            ) from None
        except Exception as exc:  # anything else a decoder or encoder raises: still bad input
            raise errors.ValidationFailed(
                f"{where}: the payload cannot be used ({type(exc).__name__}: {exc})"
            ) from None
        found = _entity_id(msg, spec.id_field)
        if entity_id and found != entity_id:
            raise errors.ValidationFailed(
                f"{where}: field `{spec.id_field}` is {short_repr(found)} but the message is "
                f"addressed to entity id {short_repr(entity_id)}; make them agree",
                field=spec.id_field,
            )
        if not found:
            raise errors.ValidationFailed(
                f"{where}: the entity id field `{spec.id_field}` is empty", field=spec.id_field
            )
        return spec, found, canonical

    def _with_id(
        self, spec: WireSpec, payload: bytes, content_type: str, entity_id: str, where: str
    ) -> tuple[Any, bytes]:
        try:
            codec = msgspec.msgpack if content_type == MSGPACK else msgspec.json
            fields = codec.decode(payload)
            if not isinstance(fields, dict):
                raise msgspec.ValidationError("Expected `object`")
            fields[spec.id_field] = entity_id
            return _decode(spec, codec.encode(fields), content_type)
        except msgspec.ValidationError as exc:
            raise errors.ValidationFailed(f"{where}: {exc}", field=_field_of(str(exc))) from None
        except Exception as exc:  # RecursionError, OverflowError, ...: still bad input
            raise errors.ValidationFailed(
                f"{where}: the payload cannot be used ({type(exc).__name__}: {exc})"
            ) from None


def _decode(spec: WireSpec, payload: bytes, content_type: str) -> tuple[Any, bytes]:
    """The payload decoded with the rebuilt type, and as canonical msgpack."""
    if content_type == MSGPACK:
        return spec.msgpack_decoder.decode(payload), payload
    msg = spec.json_decoder.decode(payload)
    return msg, to_msgpack(msg)


def _entity_id(msg: Any, id_field: str) -> str:
    value = getattr(msg, id_field, msgspec.UNSET)
    return "" if value is msgspec.UNSET else str(value)


def _field_of(msgspec_error: str) -> str:
    """``"Expected `int`, got `str` - at `$.amount`"`` -> ``"amount"``."""
    if "- at `$." in msgspec_error:
        return msgspec_error.rsplit("- at `$.", 1)[1].rstrip("`")
    if "missing required field `" in msgspec_error:
        return msgspec_error.split("missing required field `", 1)[1].split("`", 1)[0]
    return ""
