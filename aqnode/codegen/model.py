"""What every generator shares: the registry's messages as one set of uniquely named types.

Each message's payload and reply come as a :class:`~aqnode.wiretypes.TypeDesc` of their
own, so one struct (a ``Line`` used by three messages) appears in several descriptions.
:func:`build` unifies them: two structs are the same type when their canonical form (the
struct and everything it refers to, re-indexed in the order first met) is equal, and
each distinct struct and enum gets one name, the original where it is free. Everything
is sorted, so the same registry entries always give the same model, and the same bytes.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from aqnode.registry import MessageInfo, Snapshot
from aqnode.wiretypes import (
    DictNode,
    LiteralNode,
    Node,
    RefNode,
    SeqNode,
    StructDesc,
    TupleNode,
    TypeDesc,
    UnionNode,
)

__all__ = ["EnumDef", "MessageDef", "Model", "StructDef", "build", "map_refs", "walk"]

#: names no generated type may take: what the generated modules import or define, the
#: builtins they use, and TypeScript's predefined type names
RESERVED = frozenset(
    {
        "aqnode", "msgspec", "typing", "datetime", "decimal", "enum", "uuid", "annotations",
        "int", "float", "str", "bytes", "bytearray", "memoryview", "bool", "list", "set",
        "frozenset", "tuple", "dict", "object", "type", "EntityTypes",
        "any", "unknown", "never", "void", "null", "undefined", "number", "string",
        "boolean", "symbol", "bigint", "Record", "Array", "Partial", "Required",
    }
)  # fmt: skip


@dataclass
class StructDef:
    name: str  #: the name in generated code (unique)
    desc: StructDesc
    home: TypeDesc  #: the description whose indexes its field types use
    key: bytes  #: canonical form
    message: MessageDef | None = None


@dataclass
class EnumDef:
    name: str
    node: LiteralNode

    @property
    def members(self) -> list[tuple[str, bool | int | str | None]]:
        return list(zip(self.node.member_names, self.node.values, strict=True))


@dataclass
class MessageDef:
    entity_type: str
    group: str
    catalogue: str  #: the registry entry it comes from (a catalogue digest)
    info: MessageInfo
    struct: StructDef = field(init=False)

    @property
    def wire_name(self) -> str:
        return self.info.name


@dataclass
class Model:
    messages: list[MessageDef]
    structs: list[StructDef]  #: the structs that are not messages, by name
    enums: list[EnumDef]
    sources: list[tuple[str, str]]  #: (service group, catalogue digest), sorted
    _by_key: dict[bytes, StructDef]
    _keys: dict[tuple[int, int], bytes]
    _enums: dict[tuple[object, ...], EnumDef]

    def ref(self, home: TypeDesc, index: int) -> StructDef:
        return self._by_key[self._keys[(id(home), index)]]

    def enum(self, node: LiteralNode) -> EnumDef | None:
        return self._enums.get(_enum_key(node))

    def entity_types(self) -> Iterator[tuple[str, list[MessageDef]]]:
        current: list[MessageDef] = []
        for m in self.messages:
            if current and current[0].entity_type != m.entity_type:
                yield current[0].entity_type, current
                current = []
            current.append(m)
        if current:
            yield current[0].entity_type, current


def build(snapshot: Snapshot) -> Model:
    """The model of every message in ``snapshot``. An entity type that several groups
    handle is taken once: from the snapshot's local group, else the first by name."""
    chosen: dict[str, tuple[str, str, list[MessageInfo]]] = {}
    ordered = sorted(
        snapshot.entity_types(),
        key=lambda g: (g[0].name != snapshot.local_group, g[0].name),
    )
    for group, et in ordered:
        chosen.setdefault(et.name, (group.name, group.catalogue, list(et.messages)))
    messages = [
        MessageDef(name, group, digest, info)
        for name, (group, digest, infos) in sorted(chosen.items())
        for info in sorted(infos, key=lambda i: i.name)
    ]
    return _Builder(messages).run()


class _Builder:
    def __init__(self, messages: list[MessageDef]) -> None:
        self.messages = messages
        self.keys: dict[tuple[int, int], bytes] = {}
        self.descs: dict[bytes, tuple[StructDesc, TypeDesc]] = {}
        self.enum_nodes: dict[tuple[object, ...], LiteralNode] = {}

    def run(self) -> Model:
        for m in self.messages:
            for desc in (m.info.payload, m.info.reply):
                self.scan(desc)
        taken = set(RESERVED)
        by_key: dict[bytes, StructDef] = {}
        for m in self.messages:  # messages keep their names: on the wire, that is the name
            root = m.info.payload.root
            if not isinstance(root, RefNode):
                raise ValueError(f"{m.entity_type}.{m.wire_name}: the payload is not a struct")
            key = self.keys[(id(m.info.payload), root.index)]
            name = _free(_identifier(m.wire_name), taken, m.entity_type)
            s = StructDef(name, m.info.payload.structs[root.index], m.info.payload, key, m)
            m.struct = s
            by_key.setdefault(key, s)
        enums: dict[tuple[object, ...], EnumDef] = {}
        for ekey, node in sorted(self.enum_nodes.items(), key=lambda kv: repr(kv[0])):
            assert node.enum_name is not None
            enums[ekey] = EnumDef(_free(_identifier(node.enum_name), taken), node)
        structs = []
        for key, (sdesc, home) in sorted(self.descs.items(), key=lambda kv: (kv[1][0].name, kv[0])):
            if key not in by_key:
                s = StructDef(_free(_identifier(sdesc.name), taken), sdesc, home, key)
                by_key[key] = s
                structs.append(s)
        structs.sort(key=lambda s: s.name)
        sources = sorted({(m.group, m.catalogue) for m in self.messages})
        return Model(
            messages=self.messages,
            structs=structs,
            enums=sorted(enums.values(), key=lambda e: e.name),
            sources=sources,
            _by_key=by_key,
            _keys=self.keys,
            _enums=enums,
        )

    def scan(self, desc: TypeDesc) -> None:
        for i, s in enumerate(desc.structs):
            key = canonical(desc, i)
            self.keys[(id(desc), i)] = key
            self.descs.setdefault(key, (s, desc))
            for f in s.fields:
                self.scan_enums(f.type)
        self.scan_enums(desc.root)

    def scan_enums(self, node: Node) -> None:
        for n in walk(node):
            if not isinstance(n, LiteralNode) or n.enum_name is None:
                continue
            if len(n.member_names) == len(n.values):
                self.enum_nodes.setdefault(_enum_key(n), n)


def _enum_key(node: LiteralNode) -> tuple[object, ...]:
    return (node.enum_name, node.values, node.member_names)


def canonical(desc: TypeDesc, index: int) -> bytes:
    """The struct at ``index`` and all it refers to, re-indexed in the order first met:
    equal bytes, equal types (recursion included)."""
    order: list[int] = []
    seen: dict[int, int] = {}

    def visit(i: int) -> None:
        if i in seen:
            return
        seen[i] = len(order)
        order.append(i)
        for f in desc.structs[i].fields:
            for n in walk(f.type):
                if isinstance(n, RefNode):
                    visit(n.index)

    visit(index)
    structs = [
        msgspec.structs.replace(
            desc.structs[i],
            fields=tuple(
                msgspec.structs.replace(f, type=map_refs(f.type, seen.__getitem__))
                for f in desc.structs[i].fields
            ),
        )
        for i in order
    ]
    return msgspec.msgpack.encode(structs)


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every node inside it (not through struct references), depth first."""
    yield node
    if isinstance(node, SeqNode):
        yield from walk(node.item)
    elif isinstance(node, TupleNode | UnionNode):
        for n in node.items if isinstance(node, TupleNode) else node.types:
            yield from walk(n)
    elif isinstance(node, DictNode):
        yield from walk(node.key)
        yield from walk(node.value)


def map_refs(node: Node, to: Callable[[int], int]) -> Node:
    """``node`` with every struct index ``i`` replaced by ``to(i)``."""
    if isinstance(node, RefNode):
        return RefNode(index=to(node.index))
    if isinstance(node, SeqNode):
        return msgspec.structs.replace(node, item=map_refs(node.item, to))
    if isinstance(node, TupleNode):
        return TupleNode(items=tuple(map_refs(n, to) for n in node.items))
    if isinstance(node, UnionNode):
        return UnionNode(types=tuple(map_refs(n, to) for n in node.types))
    if isinstance(node, DictNode):
        return msgspec.structs.replace(
            node, key=map_refs(node.key, to), value=map_refs(node.value, to)
        )
    return node


def _identifier(name: str) -> str:
    """``name`` as a Python and TypeScript identifier (a class name nearly always is)."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if ident[0].isdigit() or keyword.iskeyword(ident):
        ident = "_" + ident
    return ident


def _free(name: str, taken: set[str], hint: str = "") -> str:
    """``name``, or ``name_<hint>``, ``name_2``, ... : the first not taken (then taken)."""
    candidates: Iterable[str] = [name]
    if hint:
        candidates = [name, f"{name}_{_identifier(hint)}"]
    for candidate in candidates:
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    taken.add(f"{name}_{n}")
    return f"{name}_{n}"
