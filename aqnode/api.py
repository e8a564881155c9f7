"""The handler API of SPEC section 3: message bases and the two decorators.

Decorators only record what they are given in a process-wide registry; the
:class:`~aqnode.catalogue.Catalogue` checks it as a whole once the handler modules are
imported, so that every start-up error can name all of its culprits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

R = TypeVar("R")
M = TypeVar("M", bound="Message")
F = TypeVar("F", bound=Callable[..., Any])


class Message(msgspec.Struct):
    """The base of every message; its wire name is the class name."""


class Command(Message, Generic[R]):
    """A message that changes its entity; ``R`` is the reply type (``None`` for none)."""


class Query(Message, Generic[R]):
    """A message that reads its entity; sequenced with commands like any other."""


@dataclass
class HandlerRecord:
    message_class: type[Message]
    func: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    @property
    def qualname(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"


@dataclass
class Registry:
    """What the decorators recorded, in the order they ran."""

    message_classes: list[type[Message]] = field(default_factory=list)
    handlers: list[HandlerRecord] = field(default_factory=list)


REGISTRY = Registry()

_ENTITY_TYPE_ATTR = "__aq_entity_type__"
_ID_FIELD_ATTR = "__aq_id_field__"


def entity_type(name: str, id_field: str | None = None) -> Callable[[type[M]], type[M]]:
    """Name the entity type a message class addresses and the field holding the entity id."""
    if not name or ":" in name:
        raise ValueError(f"entity type name {name!r} must be non-empty and contain no ':'")

    def mark(cls: type[M]) -> type[M]:
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(f"@entity_type applies to Command/Query classes, not {cls!r}")
        setattr(cls, _ENTITY_TYPE_ATTR, name)
        setattr(cls, _ID_FIELD_ATTR, id_field)
        REGISTRY.message_classes.append(cls)
        return cls

    return mark


def handles(message_class: type[Message]) -> Callable[[F], F]:
    """Register ``func(msg, ctx)`` as the one handler of ``message_class``."""

    def register(func: F) -> F:
        REGISTRY.handlers.append(HandlerRecord(message_class, func))
        return func

    return register


def entity_type_of(cls: type[Message]) -> str | None:
    value = getattr(cls, _ENTITY_TYPE_ATTR, None)
    return value if isinstance(value, str) else None


def id_field_of(cls: type[Message]) -> str | None:
    value = getattr(cls, _ID_FIELD_ATTR, None)
    return value if isinstance(value, str) else None


def reply_type_of(cls: type[Message]) -> Any:
    """The ``R`` of ``Command[R]``/``Query[R]`` in ``cls``'s bases; ``Any`` if not given."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = getattr(base, "__origin__", None)
            if origin in (Command, Query):
                args = getattr(base, "__args__", ())
                if args and not isinstance(args[0], TypeVar):
                    return args[0]
    return Any
