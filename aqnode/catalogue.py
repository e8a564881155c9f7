"""The checked set of entity types, messages and handlers a node serves (shard side).

Built in each shard after the handler modules are imported; the shards use it to decode
and run messages, and send :meth:`Catalogue.describe` to the supervisor, which validates
payloads with types rebuilt from that (:mod:`aqnode.validation`) and never
imports a handler module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from aqnode import errors
from aqnode.api import (
    REGISTRY,
    HandlerRecord,
    Message,
    Query,
    Registry,
    entity_type_of,
    id_field_of,
    reply_type_of,
)
from aqnode.config import NodeConfig
from aqnode.wiretypes import MessageEntry, describe

JSON = "application/json"
MSGPACK = "application/msgpack"
CONTENT_TYPES = (JSON, MSGPACK)


@dataclass(frozen=True)
class MessageSpec:
    """One message class the node handles, with what it takes to decode and run it."""

    entity_type: str
    name: str
    cls: type[Message]
    id_field: str
    handler: HandlerRecord
    reply_type: Any
    takes_context: bool
    is_async: bool
    json_decoder: msgspec.json.Decoder[Any]
    msgpack_decoder: msgspec.msgpack.Decoder[Any]

    def decode(self, payload: bytes, content_type: str) -> Message:
        decoder = self.msgpack_decoder if content_type == MSGPACK else self.json_decoder
        result: Message = decoder.decode(payload)
        return result

    def entity_id_of(self, msg: Message) -> str:
        return str(getattr(msg, self.id_field))

    @property
    def reply_type_name(self) -> str:
        rt = self.reply_type
        return "None" if rt is None else getattr(rt, "__qualname__", None) or repr(rt)

    def reply_problem(self, reply: Any, encoded: bytes) -> str | None:
        """Why ``reply`` (``encoded``, its msgpack) is not the declared ``R``, as the caller
        will decode it, or None: a Struct is checked field by field, not only by class."""
        rt = self.reply_type
        if rt is Any:
            return None
        if rt is None or rt is type(None):
            return None if reply is None else "not None"
        if isinstance(rt, type) and issubclass(rt, msgspec.Struct) and not isinstance(reply, rt):
            return "not an instance of it"
        try:
            _reply_decoder(rt).decode(encoded)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return f"it does not decode as one: {exc}"
        return None


@functools.cache
def _reply_decoder(reply_type: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(reply_type)


class Catalogue:
    """entity type -> message name -> :class:`MessageSpec`."""

    def __init__(self, specs: Iterable[MessageSpec]) -> None:
        self.entity_types: dict[str, dict[str, MessageSpec]] = {}
        for spec in specs:
            self.entity_types.setdefault(spec.entity_type, {})[spec.name] = spec

    def lookup(self, entity_type: str, message: str) -> MessageSpec:
        return lookup_in(self.entity_types, entity_type, message)

    def describe(self) -> list[MessageEntry]:
        """Every message as plain data, for the supervisor (which imports no user code)."""
        return [
            MessageEntry(
                spec.entity_type,
                spec.name,
                "query" if issubclass(spec.cls, Query) else "command",
                spec.id_field,
                describe(spec.cls),
                describe(spec.reply_type),
            )
            for messages in self.entity_types.values()
            for spec in messages.values()
        ]


S = TypeVar("S")


def lookup_in(entity_types: Mapping[str, Mapping[str, S]], entity_type: str, message: str) -> S:
    """The entry for ``entity_type``.``message``, else UNKNOWN_ENTITY_TYPE or
    UNKNOWN_MESSAGE naming what is known (the shard and the supervisor alike)."""
    messages = entity_types.get(entity_type)
    if messages is None:
        known = ", ".join(sorted(entity_types)) or "none"
        raise errors.ValidationFailed(
            f"this node handles no entity type {short_repr(entity_type)} (it handles: {known})",
            code=errors.UNKNOWN_ENTITY_TYPE,
        )
    spec = messages.get(message)
    if spec is None:
        known = ", ".join(sorted(messages))
        raise errors.ValidationFailed(
            f"entity type {short_repr(entity_type)} has no message {short_repr(message)} "
            f"(it has: {known})",
            code=errors.UNKNOWN_MESSAGE,
        )
    return spec


def check_config_against(catalogue: Catalogue, config: NodeConfig) -> None:
    """The config and the handlers must agree: no [entities.X] for an unknown type."""
    unknown = sorted(set(config.entities) - set(catalogue.entity_types))
    if unknown:
        known = ", ".join(sorted(catalogue.entity_types)) or "none"
        raise errors.StartupError(
            f"the config has [entities.{unknown[0]}] but no handler module defines entity "
            f"type {unknown[0]!r} (defined: {known}); fix the name or the handlers list"
        )
    if not catalogue.entity_types:
        raise errors.StartupError(
            "no handlers: the config's handlers list names no module with @handles functions"
        )


def short_repr(text: str, limit: int = 100) -> str:
    """``repr(text)``, cut: an error echoes what a client sent, never all of it."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def import_handler_modules(modules: Iterable[str]) -> None:
    """Import the configured handler modules. A module that is not there is one line; a
    module that raises carries its traceback (the user's code, without importlib's)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                raise errors.StartupError(
                    f"handler module {name!r} was not found: it must be importable from the "
                    "directory `aqnode serve` runs in, PYTHONPATH or the environment's packages"
                ) from None
            raise errors.StartupError(_import_failure(name, exc)) from None
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise errors.StartupError(_import_failure(name, exc)) from None


def _import_failure(name: str, exc: BaseException) -> str:
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen importlib")
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    trace = "".join(traceback.format_list(frames))
    return (
        f"handler module {name!r} failed to import: {type(exc).__name__}: {exc}{where}\n"
        f"Traceback (most recent call last):\n{trace}"
    ).rstrip()


def build_catalogue(
    default_entity_ids: Mapping[str, str | None], registry: Registry = REGISTRY
) -> Catalogue:
    """Check the registry as a whole; every problem found is reported at once."""
    problems: list[str] = []
    by_class: dict[type[Message], HandlerRecord] = {}
    for record in registry.handlers:
        previous = by_class.get(record.message_class)
        if previous is not None and previous.func is not record.func:
            problems.append(
                f"{record.message_class.__qualname__} has two handlers: "
                f"{previous.qualname} and {record.qualname}; keep one"
            )
            continue
        by_class[record.message_class] = record
    specs: list[MessageSpec] = []
    names: dict[tuple[str, str], type[Message]] = {}
    for cls, record in by_class.items():
        spec = _spec_for(cls, record, default_entity_ids, problems)
        if spec is None:
            continue
        clash = names.get((spec.entity_type, spec.name))
        if clash is not None and clash is not cls:
            problems.append(
                f"entity type {spec.entity_type!r} has two message classes named {spec.name!r}: "
                f"{clash.__module__}.{clash.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
            continue
        names[(spec.entity_type, spec.name)] = cls
        specs.append(spec)
    if problems:
        raise errors.StartupError(
            "the handler modules are inconsistent:\n  " + "\n  ".join(problems)
        )
    return Catalogue(specs)


def _spec_for(
    cls: type[Message],
    record: HandlerRecord,
    default_entity_ids: Mapping[str, str | None],
    problems: list[str],
) -> MessageSpec | None:
    where = f"{cls.__module__}.{cls.__qualname__}"
    etype = entity_type_of(cls)
    if etype is None:
        problems.append(f"{where} (handled by {record.qualname}) has no @entity_type")
        return None
    id_field = id_field_of(cls) or default_entity_ids.get(etype)
    if not id_field:
        problems.append(
            f"{where} has no entity id field: give @entity_type({etype!r}, id_field=...) "
            f"or default_entity_id in [entities.{etype}]"
        )
        return None
    if id_field not in cls.__struct_fields__:
        problems.append(f"{where} has no field {id_field!r}, its entity id field")
        return None
    return MessageSpec(
        entity_type=etype,
        name=cls.__name__,
        cls=cls,
        id_field=id_field,
        handler=record,
        reply_type=reply_type_of(cls),
        takes_context=_arity(record.func) >= 2,
        is_async=record.is_async,
        json_decoder=msgspec.json.Decoder(cls),
        msgpack_decoder=msgspec.msgpack.Decoder(cls),
    )


def _arity(func: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return 2
