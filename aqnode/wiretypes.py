"""Message types as data: describe a msgspec type in a shard, rebuild it in the supervisor.

The supervisor validates client payloads before anything is written, but must not import
user code (no user module, no ``__post_init__``, no validators). A shard, which imports the
handler modules anyway, sends it one :class:`TypeDesc` per message class; the supervisor
turns each into an equivalent msgspec type with :func:`rebuild` and decodes with that.

Public API:

- ``describe(cls) -> TypeDesc``: walk ``msgspec.inspect.type_info(cls)`` into plain Structs
  (no user class, no callable), so ``msgspec.msgpack.encode`` / ``decode(type=TypeDesc)``
  round-trip it. Structs are listed once in ``TypeDesc.structs`` and referred to by index,
  which is what makes recursive types finite.
- ``rebuild(desc) -> Any``: a type built only from the description (a ``defstruct`` class
  named like the original for a struct root) that accepts exactly the payloads the real
  class accepts, with errors at the same path.
- ``to_msgpack(value) -> bytes``: ``msgspec.msgpack.encode``, which also copes with the
  one case it refuses (below); use it to re-encode rebuilt instances.

What a rebuilt decode keeps: the wire shape and every check msgspec itself does (types,
``Meta`` constraints, field names and renames, tags, ``array_like``,
``forbid_unknown_fields``). What it drops: user code (``__post_init__``, dataclass/attrs
hooks, an enum's ``_missing_``). Re-encoding a rebuilt instance with ``msgspec.msgpack``
gives a payload that the real class decodes to the value it would have decoded from the
original payload:

- a field with a default is ``T | UnsetType = UNSET`` in the rebuilt struct, so a field the
  sender omitted is omitted again and the shard's class applies its own default (a factory
  such as ``datetime.now`` runs in the shard, at the right time);
- msgspec cannot encode ``UNSET`` inside an ``array_like`` struct (nor a ``NamedTuple``),
  so there the description carries the default itself, msgpack-encoded, when it survives
  a round trip through the field's real type (a factory is called twice and must agree).
  Otherwise (``datetime.now``, ``uuid4``, a value its own type doesn't decode back) the
  field stays ``UNSET``: validation is still exact, but ``msgspec.msgpack.encode`` of an
  instance that lacks the field raises ``TypeError``; :func:`to_msgpack` encodes it
  (the array cut where the sender's ended, so the shard applies its own defaults).

Falls back to ``Any`` (accepts anything, the shard decides): ``CustomType`` (needs a
``dec_hook``), ``msgspec.Raw`` (its bytes are the sender's encoding, not msgpack) and
unbound ``TypeVar`` s (msgspec itself treats those as ``Any``). Enums are rebuilt as a
``Literal`` of their values (msgpack and JSON carry an enum as its value); an enum whose
user code may accept more (a ``Flag``, or a custom ``_missing_``) becomes its plain value
type (``int`` or ``str``), a superset the shard narrows.

Re-encoding is subject to msgpack's own limits, as for the real class: an ``int`` outside
``[-2**63, 2**64 - 1]`` (valid in JSON) raises ``OverflowError``.

For the registry (SPEC 11: JSON Schemas, generated code) a description also carries what
only documentation needs, all plain data: an enum's class and member names, a class's
docstring, and a field's default where it is a constant (``FieldDesc.documented_default``;
no user factory is called for it). Validation ignores them; ``rebuild(desc,
documented=True)`` uses them, for schemas only.
"""

from __future__ import annotations

import builtins
import datetime
import decimal
import enum
import functools
import keyword
import time
import typing
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeAlias, Union

import msgspec
import msgspec.inspect as mi

__all__ = [
    "AnyNode",
    "BytesNode",
    "DictNode",
    "FieldDesc",
    "FloatNode",
    "IntNode",
    "LiteralNode",
    "Node",
    "RefNode",
    "ScalarNode",
    "SeqNode",
    "StrNode",
    "StructDesc",
    "TemporalNode",
    "TupleNode",
    "TypeDesc",
    "UnionNode",
    "describe",
    "rebuild",
    "to_msgpack",
]


# --- the description: small tagged Structs -------------------------------------------------


class _Desc(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every description Struct; a drifted format fails loudly instead of guessing."""


class _Node(_Desc, frozen=True, tag_field="k"):
    pass


class AnyNode(_Node, frozen=True, tag="any"):
    """Anything msgspec can decode."""


ScalarKind: TypeAlias = Literal["none", "bool", "date", "timedelta", "uuid", "decimal", "ext"]


class ScalarNode(_Node, frozen=True, tag="scalar"):
    """A type with no constraints to carry."""

    kind: ScalarKind


class IntNode(_Node, frozen=True, tag="int"):
    gt: int | None = None
    ge: int | None = None
    lt: int | None = None
    le: int | None = None
    multiple_of: int | None = None


class FloatNode(_Node, frozen=True, tag="float"):
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: float | None = None


class StrNode(_Node, frozen=True, tag="str"):
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None


class BytesNode(_Node, frozen=True, tag="bytes"):
    kind: Literal["bytes", "bytearray", "memoryview"] = "bytes"
    min_length: int | None = None
    max_length: int | None = None


class TemporalNode(_Node, frozen=True, tag="temporal"):
    """``datetime`` or ``time``; ``tz`` True/False requires/forbids a timezone."""

    kind: Literal["datetime", "time"]
    tz: bool | None = None


LiteralValue: TypeAlias = bool | int | str | None


class LiteralNode(_Node, frozen=True, tag="literal"):
    """A ``Literal``, or an ``Enum`` as the values that stand for it on the wire.

    For an enum, ``enum_name`` and ``member_names`` (one per value) keep its names for the
    registry's schemas and generated code; validation ignores them."""

    values: tuple[LiteralValue, ...]
    enum_name: str | None = None
    member_names: tuple[str, ...] = ()


class SeqNode(_Node, frozen=True, tag="seq"):
    """A homogeneous collection; ``tuple`` means ``tuple[T, ...]``."""

    kind: Literal["list", "set", "frozenset", "tuple"]
    item: Node
    min_length: int | None = None
    max_length: int | None = None


class TupleNode(_Node, frozen=True, tag="tuple"):
    """A fixed-length tuple."""

    items: tuple[Node, ...]


class DictNode(_Node, frozen=True, tag="dict"):
    key: Node
    value: Node
    min_length: int | None = None
    max_length: int | None = None
    frozen: bool = False  # `frozendict` (Python 3.15+)


class UnionNode(_Node, frozen=True, tag="union"):
    types: tuple[Node, ...]


class RefNode(_Node, frozen=True, tag="ref"):
    """The struct at ``TypeDesc.structs[index]``."""

    index: int


Node: TypeAlias = Union[  # noqa: UP007 - a runtime alias msgspec resolves; `|` needs types
    AnyNode,
    ScalarNode,
    IntNode,
    FloatNode,
    StrNode,
    BytesNode,
    TemporalNode,
    LiteralNode,
    SeqNode,
    TupleNode,
    DictNode,
    UnionNode,
    RefNode,
]


class FieldDesc(_Desc, frozen=True):
    name: str  # the Python attribute name (kept: the supervisor reads the id field)
    encode_name: str  # the name on the wire
    type: Node
    required: bool = True
    # Only for positional (array_like) structs, where UNSET can't be encoded: the default,
    # msgpack-encoded, when it is safe to send in the shard's place (see the module doc).
    default_msgpack: bytes | None = None
    # For documentation only (the registry's schemas, generated code), where
    # default_msgpack is not set: a constant default (or the empty value of a builtin
    # container factory), msgpack-encoded. Validation never uses it.
    documented_default: bytes | None = None

    @property
    def shown_default(self) -> bytes | None:
        """The default as msgpack, when the description knows it."""
        return self.default_msgpack if self.default_msgpack is not None else self.documented_default


class StructDesc(_Desc, frozen=True):
    """A Struct (or a dataclass/attrs class/TypedDict/NamedTuple, rebuilt as one)."""

    name: str
    fields: tuple[FieldDesc, ...]
    tag_field: str | None = None
    tag: str | int | None = None
    array_like: bool = False
    forbid_unknown_fields: bool = False
    doc: str | None = None  # the class's docstring, for the registry (schemas, generated code)


class TypeDesc(_Desc, frozen=True):
    root: Node
    structs: tuple[StructDesc, ...] = ()


# --- describe ------------------------------------------------------------------------------

_SCALARS: dict[type[mi.Type], ScalarKind] = {
    mi.NoneType: "none",
    mi.BoolType: "bool",
    mi.DateType: "date",
    mi.TimeDeltaType: "timedelta",
    mi.UUIDType: "uuid",
    mi.DecimalType: "decimal",
    mi.ExtType: "ext",
}
_SEQS: dict[type[mi.Type], Literal["list", "set", "frozenset", "tuple"]] = {
    mi.ListType: "list",
    mi.SetType: "set",
    mi.FrozenSetType: "frozenset",
    mi.VarTupleType: "tuple",
}
_BYTES: dict[type[mi.Type], Literal["bytes", "bytearray", "memoryview"]] = {
    mi.BytesType: "bytes",
    mi.ByteArrayType: "bytearray",
    mi.MemoryViewType: "memoryview",
}
_Composite = mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType


def describe(cls: type[Any]) -> TypeDesc:
    """A serializable description of ``cls`` (any msgspec-decodable type) for :func:`rebuild`."""
    return _Describer().run(cls)


class _Describer:
    def __init__(self) -> None:
        self.structs: list[StructDesc | None] = []
        self.index: dict[int, int] = {}  # id(inspect node) -> index; type_info shares nodes
        self.as_tuple: set[int] = set()  # NamedTuples being described as plain tuples

    def run(self, cls: Any) -> TypeDesc:
        info = mi.type_info(cls)  # held while walking: `index` is keyed by id() of its nodes
        root = self.node(info)
        structs = tuple(s for s in self.structs if s is not None)
        assert len(structs) == len(self.structs)
        return TypeDesc(root=root, structs=structs)

    def node(self, t: mi.Type) -> Node:
        if isinstance(t, mi.Metadata):  # title/description/extra: no effect on decoding
            return self.node(t.type)
        if type(t) in _SCALARS:
            return ScalarNode(kind=_SCALARS[type(t)])
        if isinstance(t, mi.IntType):
            return IntNode(gt=t.gt, ge=t.ge, lt=t.lt, le=t.le, multiple_of=t.multiple_of)
        if isinstance(t, mi.FloatType):
            return FloatNode(gt=t.gt, ge=t.ge, lt=t.lt, le=t.le, multiple_of=t.multiple_of)
        if isinstance(t, mi.StrType):
            return StrNode(min_length=t.min_length, max_length=t.max_length, pattern=t.pattern)
        if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
            kind = _BYTES[type(t)]
            return BytesNode(kind=kind, min_length=t.min_length, max_length=t.max_length)
        if isinstance(t, mi.DateTimeType):
            return TemporalNode(kind="datetime", tz=t.tz)
        if isinstance(t, mi.TimeType):
            return TemporalNode(kind="time", tz=t.tz)
        if isinstance(t, mi.LiteralType):
            return LiteralNode(values=tuple(_plain_value(v) for v in t.values))
        if isinstance(t, mi.EnumType):
            return _enum_node(t.cls)
        if isinstance(t, mi.CollectionType):
            item = self.node(t.item_type)
            return SeqNode(
                kind=_SEQS[type(t)], item=item, min_length=t.min_length, max_length=t.max_length
            )
        if isinstance(t, mi.TupleType):
            return TupleNode(items=tuple(self.node(i) for i in t.item_types))
        if isinstance(t, mi.DictType | mi.FrozenDictType):
            return DictNode(
                key=self.node(t.key_type),
                value=self.node(t.value_type),
                min_length=t.min_length,
                max_length=t.max_length,
                frozen=isinstance(t, mi.FrozenDictType),
            )
        if isinstance(t, mi.UnionType):
            return UnionNode(types=tuple(self.node(m) for m in t.types))
        if isinstance(t, mi.NamedTupleType) and all(f.required for f in t.fields):
            try:
                return self.plain_tuple(t)
            except _Recursive:
                pass
        if isinstance(t, _Composite):
            return RefNode(index=self.composite(t))
        # AnyType, RawType (its bytes are the sender's encoding), CustomType (needs user
        # code: a dec_hook): accept anything and let the shard decide.
        return AnyNode()

    def plain_tuple(self, t: mi.NamedTupleType) -> Node:
        """A NamedTuple without defaults is a fixed tuple on the wire; as one, its errors
        keep their path (msgspec's JSON error for a too-long array_like struct has none)."""
        if id(t) in self.as_tuple:
            raise _Recursive  # a tuple can't refer to itself: the caller makes it a struct
        self.as_tuple.add(id(t))
        try:
            return TupleNode(items=tuple(self.node(f.type) for f in t.fields))
        finally:
            self.as_tuple.discard(id(t))

    def composite(self, t: _Composite) -> int:
        if id(t) in self.index:
            return self.index[id(t)]
        i = self.index[id(t)] = len(self.structs)
        self.structs.append(None)  # reserved first: a field may refer back to this struct
        origin = typing.get_origin(t.cls) or t.cls
        name = getattr(origin, "__name__", "Struct")
        doc = getattr(origin, "__doc__", None)
        doc = doc if isinstance(doc, str) and doc.strip() else None
        if isinstance(t, mi.StructType):
            self.structs[i] = StructDesc(
                name=name,
                fields=self.fields(t, positional=t.array_like),
                tag_field=t.tag_field,
                tag=t.tag,
                array_like=t.array_like,
                forbid_unknown_fields=t.forbid_unknown_fields,
                doc=doc,
            )
        elif isinstance(t, mi.NamedTupleType):
            # An array of length required..all; rebuilt as a positional struct that
            # rejects extra items, like a tuple does.
            self.structs[i] = StructDesc(
                name=name,
                fields=self.fields(t, positional=True),
                array_like=True,
                forbid_unknown_fields=True,
                doc=doc,
            )
        else:  # dataclass/attrs/TypedDict: an object whose unknown keys are ignored
            fields = self.fields(t, positional=False)
            self.structs[i] = StructDesc(name=name, fields=fields, doc=doc)
        return i

    def fields(self, t: _Composite, *, positional: bool) -> tuple[FieldDesc, ...]:
        optional = any(not f.required for f in t.fields)
        hints = _field_hints(t.cls) if optional else {}
        described = []
        for f in t.fields:
            sent = None
            if positional and not f.required:
                sent = _encoded_default(f, hints.get(f.name))
            shown = None
            if sent is None and not f.required:
                shown = _documented_default(f, hints.get(f.name))
            described.append(
                FieldDesc(
                    name=f.name,
                    encode_name=f.encode_name,
                    type=self.node(f.type),
                    required=f.required,
                    default_msgpack=sent,
                    documented_default=shown,
                )
            )
        return tuple(described)


class _Recursive(Exception):
    pass


def _plain_value(v: Any) -> LiteralValue:
    """A Literal/Enum value as the plain builtin the wire carries (never a user subclass)."""
    if isinstance(v, enum.Enum):
        v = v.value
    if v is None or type(v) is bool:
        return typing.cast(LiteralValue, v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str.__str__(v)
    raise TypeError(f"unsupported Literal/Enum value {v!r}")  # msgspec rejects these too


def _enum_node(cls: type[enum.Enum]) -> Node:
    values = tuple(_plain_value(m) for m in cls)
    default_missing = getattr(enum.Enum._missing_, "__func__", None)
    own_missing = getattr(cls._missing_, "__func__", None) is not default_missing
    if issubclass(cls, enum.Flag) or own_missing:
        # msgspec falls back to the enum's `_missing_` (user code) for unknown values:
        # accept the whole value type and let the shard narrow it.
        return StrNode() if all(isinstance(v, str) for v in values) else IntNode()
    return LiteralNode(
        values=values, enum_name=cls.__name__, member_names=tuple(m.name for m in cls)
    )


def _field_hints(cls: Any) -> dict[str, Any]:
    """Field name -> real type, to check that a positional default survives the wire."""
    try:
        if msgspec.inspect.is_struct_type(typing.get_origin(cls) or cls):
            return {f.name: f.type for f in msgspec.structs.fields(cls)}
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable hints: no default is sent (the field stays UNSET)
        return {}


FACTORY_PROBE_GAP_S = 0.002  #: seconds between the two calls of a default factory


def _encoded_default(f: mi.Field, hint: Any) -> bytes | None:
    """The default msgpack-encoded if the real type decodes it back to an equal value."""
    if hint is None:
        return None
    try:
        if f.default_factory is not msgspec.NODEFAULT:
            value = f.default_factory()
            # e.g. datetime.now, uuid4: only the shard knows. Called again a moment later,
            # since a clock read twice in one microsecond would look like a constant.
            time.sleep(FACTORY_PROBE_GAP_S)
            if value != f.default_factory():
                return None
        elif f.default is not msgspec.NODEFAULT:
            value = f.default
        else:  # an UNSET default: the real class can't encode it positionally either
            return None
        data = msgspec.msgpack.encode(value)
        if msgspec.msgpack.decode(data, type=hint) != value:
            return None
    except Exception:  # not encodable, not decodable as its own type: keep it UNSET
        return None
    return data


#: default factories that are plain empty values: called to document the default
_EMPTY_FACTORIES: tuple[Any, ...] = (list, dict, set, frozenset, tuple, bytearray)


def _documented_default(f: mi.Field, hint: Any) -> bytes | None:
    """A constant default msgpack-encoded, for documentation: only a plain value (or an
    empty builtin container) that its own type decodes back; no user factory is called."""
    if hint is None:
        return None
    if f.default_factory is not msgspec.NODEFAULT:
        if f.default_factory not in _EMPTY_FACTORIES:
            return None  # e.g. datetime.now, uuid4, a lambda: only the shard knows
        value = f.default_factory()
    elif f.default is not msgspec.NODEFAULT and f.default is not msgspec.UNSET:
        value = f.default
    else:
        return None
    try:
        data = msgspec.msgpack.encode(value)
        if msgspec.msgpack.decode(data, type=hint) != value:
            return None
    except Exception:  # not encodable, or not decodable as its own type: not documented
        return None
    return data


# --- rebuild -------------------------------------------------------------------------------

_SCALAR_TYPES: dict[ScalarKind, Any] = {
    "none": None,
    "bool": bool,
    "date": datetime.date,
    "timedelta": datetime.timedelta,
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "ext": msgspec.msgpack.Ext,
}
_SEQ_TYPES: dict[str, Any] = {"list": list, "set": set, "frozenset": frozenset}
_TUPLE: Any = tuple  # subscripted with runtime values, which mypy can't type
_BYTES_TYPES: dict[str, Any] = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}
_TEMPORAL_TYPES: dict[str, Any] = {"datetime": datetime.datetime, "time": datetime.time}
_IMMUTABLE = (type(None), bool, int, float, str, bytes)


def rebuild(desc: TypeDesc, *, documented: bool = False) -> Any:
    """A msgspec type equivalent on the wire to the one ``desc`` describes (see module doc).

    ``documented=True`` is for JSON Schemas only (the registry): a field whose default the
    description knows takes it instead of ``UNSET``, enums come back as ``Enum`` classes
    with their names, and msgpack ``Ext`` as ``Any``. Never validate with that type: it
    would fill in defaults that belong to the shard.
    """
    enums: _Enums | None = {} if documented else None
    defaults = [[_field_default(f, enums) for f in s.fields] for s in desc.structs]
    classes = [_struct_shell(s, d) for s, d in zip(desc.structs, defaults, strict=True)]
    if enums is not None:
        for cls, s in zip(classes, desc.structs, strict=True):
            cls.__doc__ = s.doc  # the schema's description
    # The field types go in once every class exists, so structs may refer to each other
    # (and to themselves); msgspec reads annotations only when a decoder is first built.
    for cls, s, d in zip(classes, desc.structs, defaults, strict=True):
        annotations = vars(cls)["__annotations__"]
        for name, f, default in zip(cls.__struct_fields__, s.fields, d, strict=True):
            t = _type(f.type, classes, enums)
            unset = default is msgspec.UNSET
            annotations[name] = Union[t, msgspec.UnsetType] if unset else t  # noqa: UP007
    return _type(desc.root, classes, enums)


_REQUIRED: Any = object()  #: marks a required field among the defaults


def _field_default(f: FieldDesc, enums: _Enums | None) -> Any:
    if f.required:
        return _REQUIRED
    return _default(f.default_msgpack) if enums is None else _shown_default(f, enums)


_Enums: TypeAlias = dict[tuple[str, tuple[LiteralValue, ...], tuple[str, ...]], Any]


class _AnyRefs:
    """Stands for the struct classes while they do not exist yet: every struct is Any."""

    def __getitem__(self, index: int) -> Any:
        return Any


def _struct_shell(s: StructDesc, defaults: list[Any]) -> type[msgspec.Struct]:
    """The struct with its final fields, names, defaults and options; field types are
    patched later."""
    names = _python_names(f.name for f in s.fields)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, default in zip(names, defaults, strict=True):
        fields.append((name, Any) if default is _REQUIRED else (name, Any, default))
    return msgspec.defstruct(
        s.name,
        fields,
        module=__name__,
        tag=s.tag,
        tag_field=s.tag_field,
        rename={name: f.encode_name for name, f in zip(names, s.fields, strict=True)},
        array_like=s.array_like,
        forbid_unknown_fields=s.forbid_unknown_fields,
        # Keeps the described order (a required field may follow one with a default),
        # which is the wire order of an array_like struct.
        kw_only=True,
    )


def _default(data: bytes | None) -> Any:
    if data is None:  # omitted on the wire stays omitted: the shard applies its default
        return msgspec.UNSET
    # Decoded untyped: the value is only ever re-encoded, to the bytes that were checked.
    value = msgspec.msgpack.decode(data)
    if isinstance(value, _IMMUTABLE):
        return value
    factory: Callable[[], Any] = functools.partial(msgspec.msgpack.decode, data)
    return msgspec.field(default_factory=factory)


def _shown_default(f: FieldDesc, enums: _Enums) -> Any:
    """The default a documented rebuild shows: decoded with the field's own type (an enum
    member, a datetime), else ``UNSET`` (unknown: only the shard knows it)."""
    data = f.shown_default
    if data is None:
        return msgspec.UNSET
    try:
        value = msgspec.msgpack.decode(data, type=_type(f.type, _AnyRefs(), enums))
    except Exception:  # e.g. a struct default: shown as optional without a default
        return msgspec.UNSET
    if isinstance(value, (*_IMMUTABLE, enum.Enum)):
        return value
    if not value and type(value) in _EMPTY_FACTORIES:
        return msgspec.field(default_factory=type(value))  # shown as its empty value
    factory: Callable[[], Any] = functools.partial(msgspec.msgpack.decode, data)
    return msgspec.field(default_factory=factory)


def _python_names(names: typing.Iterable[str]) -> list[str]:
    """Attribute names: the original ones when usable (a TypedDict key may not be)."""
    out: list[str] = []
    for i, name in enumerate(names):
        ok = name.isidentifier() and not keyword.iskeyword(name) and name not in out
        out.append(name if ok else f"field_{i}")
    if len(set(out)) != len(out):  # a "field_3" clash: number everything
        out = [f"field_{i}" for i in range(len(out))]
    return out


def _meta(t: Any, **constraints: Any) -> Any:
    given = {k: v for k, v in constraints.items() if v is not None}
    return Annotated[t, msgspec.Meta(**given)] if given else t


def _type(n: Node, classes: Any, enums: _Enums | None = None) -> Any:
    """The type ``n`` describes; ``classes[i]`` is the struct at index i; ``enums`` is
    given (a cache) only for a documented rebuild."""
    if isinstance(n, AnyNode):
        return Any
    if isinstance(n, ScalarNode):
        if enums is not None and n.kind == "ext":
            return Any  # no JSON form: a JSON Schema says nothing about it
        return _SCALAR_TYPES[n.kind]
    if isinstance(n, IntNode | FloatNode):
        num = int if isinstance(n, IntNode) else float
        return _meta(num, gt=n.gt, ge=n.ge, lt=n.lt, le=n.le, multiple_of=n.multiple_of)
    if isinstance(n, StrNode):
        return _meta(str, min_length=n.min_length, max_length=n.max_length, pattern=n.pattern)
    if isinstance(n, BytesNode):
        return _meta(_BYTES_TYPES[n.kind], min_length=n.min_length, max_length=n.max_length)
    if isinstance(n, TemporalNode):
        return _meta(_TEMPORAL_TYPES[n.kind], tz=n.tz)
    if isinstance(n, LiteralNode):
        if enums is not None and n.enum_name is not None:
            return _enum_class(n, enums)
        return Literal[n.values]
    if isinstance(n, SeqNode):
        item = _type(n.item, classes, enums)
        seq = _TUPLE[item, ...] if n.kind == "tuple" else _SEQ_TYPES[n.kind][item]
        return _meta(seq, min_length=n.min_length, max_length=n.max_length)
    if isinstance(n, TupleNode):
        return _TUPLE[tuple(_type(i, classes, enums) for i in n.items)]
    if isinstance(n, DictNode):
        base: Any = getattr(builtins, "frozendict", dict) if n.frozen else dict
        mapping = base[_type(n.key, classes, enums), _type(n.value, classes, enums)]
        return _meta(mapping, min_length=n.min_length, max_length=n.max_length)
    if isinstance(n, UnionNode):
        return Union[tuple(_type(m, classes, enums) for m in n.types)]  # noqa: UP007
    return classes[n.index]


def _enum_class(n: LiteralNode, enums: _Enums) -> Any:
    """An Enum with the described names and values (one class per description)."""
    assert n.enum_name is not None
    key = (n.enum_name, n.values, n.member_names)
    if key not in enums:
        if len(n.member_names) != len(n.values):
            return Literal[n.values]
        members = list(zip(n.member_names, n.values, strict=True))
        enums[key] = enum.Enum(n.enum_name, members, module=__name__)
    return enums[key]


# --- re-encoding ---------------------------------------------------------------------------


def to_msgpack(value: Any) -> bytes:
    """``msgspec.msgpack.encode(value)``, also for a positional struct holding ``UNSET``.

    msgspec refuses ``UNSET`` in an ``array_like`` struct. In a decoded instance the first
    ``UNSET`` field marks where the sender's array ended (everything after it is a default
    too), so the slow path writes the array up to there: what the sender sent, which the
    real class completes with its own defaults.
    """
    try:
        return msgspec.msgpack.encode(value)
    except TypeError:
        return msgspec.msgpack.encode(_wire_shape(value))


def _wire_shape(value: Any) -> Any:
    """``value`` with every Struct as the builtins it encodes to, minus ``UNSET`` fields."""
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        values = msgspec.structs.astuple(value)
        if config.array_like:
            end = next((i for i, v in enumerate(values) if v is msgspec.UNSET), len(values))
            head = [config.tag] if config.tag_field is not None else []
            return head + [_wire_shape(v) for v in values[:end]]
        out = {config.tag_field: config.tag} if config.tag_field is not None else {}
        for name, v in zip(value.__struct_encode_fields__, values, strict=True):
            if v is not msgspec.UNSET:
                out[name] = _wire_shape(v)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_wire_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire_shape(v) for k, v in value.items()}
    return value


class MessageEntry(_Desc, frozen=True):
    """One message a node handles, as the shards tell the supervisor (and, later, the
    registry): names, kind, the entity id field, and the payload and reply types."""

    entity_type: str
    name: str
    kind: str  # "command" | "query"
    id_field: str
    payload: TypeDesc
    reply: TypeDesc
