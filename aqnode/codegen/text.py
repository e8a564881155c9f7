"""``aqnode introspect`` without ``--json``: the registry for a person to read.

Service groups with their nodes, then each entity type with its messages (kind, reply
type, fields with types, constraints and defaults), then the types they use.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import msgspec

from aqnode.codegen.model import Model, StructDef
from aqnode.registry import Snapshot
from aqnode.wiretypes import (
    AnyNode,
    BytesNode,
    DictNode,
    FieldDesc,
    FloatNode,
    IntNode,
    LiteralNode,
    Node,
    RefNode,
    ScalarNode,
    SeqNode,
    StrNode,
    TemporalNode,
    TupleNode,
    TypeDesc,
    UnionNode,
)

__all__ = ["render"]

_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length")


def render(snapshot: Snapshot, model: Model, now: float | None = None) -> str:
    now = time.time() if now is None else now
    out: list[str] = []
    if not snapshot.groups:
        return "the registry is empty: no node has published to it in the last day\n"
    for group in snapshot.groups:
        out.append(f"service group {group.name}  (catalogue {group.catalogue[:19]})")
        for n in group.nodes:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n.started_at))
            seen = _ago(now - n.last_seen)
            out.append(
                f"  node {n.server_id}  {n.address}  aqnode {n.version}  started {started}"
                f"  last seen {seen}"
                + ("" if n.catalogue == group.catalogue else "  (other handlers)")
            )
    for name, messages in model.entity_types():
        first = messages[0]
        ids = {m.info.id_field for m in messages}
        id_text = ", ".join(sorted(ids))
        out += ["", f"entity type {name}  (service group {first.group}, id field {id_text})"]
        for m in messages:
            reply = _type(m.info.reply.root, m.info.reply, model)
            out.append(f"  {m.info.kind} {m.wire_name} -> {reply}")
            out += _summary(m.struct, "    ")
            out += _fields(m.struct, model, "      ")
    if model.structs or model.enums:
        out += ["", "types"]
        for e in model.enums:
            members = ", ".join(f"{k} = {json.dumps(v)}" for k, v in e.members)
            out.append(f"  {e.name}  enum: {members}")
        for s in model.structs:
            out.append(f"  {s.name}{_options(s)}")
            out += _summary(s, "    ")
            out += _fields(s, model, "      ")
    return "\n".join(out) + "\n"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _summary(s: StructDef, indent: str) -> list[str]:
    """The first line of the class's docstring, if it has one."""
    lines = inspect.cleandoc(s.desc.doc or "").strip().splitlines()
    return [f"{indent}{lines[0]}"] if lines else []


def _options(s: StructDef) -> str:
    notes = []
    if s.desc.tag_field is not None:
        notes.append(f"tag {s.desc.tag_field} = {json.dumps(s.desc.tag)}")
    if s.desc.array_like:
        notes.append("a JSON array")
    if s.desc.forbid_unknown_fields:
        notes.append("no unknown fields")
    return f"  ({', '.join(notes)})" if notes else ""


def _fields(s: StructDef, model: Model, indent: str) -> list[str]:
    return [indent + _field(f, s.home, model) for f in s.desc.fields] or [indent + "(no fields)"]


def _field(f: FieldDesc, home: TypeDesc, model: Model) -> str:
    text = f"{f.encode_name}: {_type(f.type, home, model)}"
    if not f.required:
        default = _default(f)
        text += f" = {default}" if default is not None else "  (optional)"
    if f.name != f.encode_name:
        text += f"  (Python name {f.name})"
    return text


def _default(f: FieldDesc) -> str | None:
    data = f.shown_default
    if data is None:
        return None
    try:
        return json.dumps(msgspec.to_builtins(msgspec.msgpack.decode(data)), sort_keys=True)
    except (TypeError, ValueError, msgspec.DecodeError):
        return None


def _constrained(base: str, n: Any) -> str:
    given = [(c, getattr(n, c, None)) for c in _CONSTRAINTS]
    notes = [f"{c} {json.dumps(v)}" for c, v in given if v is not None]
    return f"{base}{{{', '.join(notes)}}}" if notes else base


def _type(n: Node, home: TypeDesc, model: Model) -> str:
    if isinstance(n, AnyNode):
        return "any"
    if isinstance(n, ScalarNode):
        return "None" if n.kind == "none" else n.kind
    if isinstance(n, IntNode | FloatNode):
        return _constrained("int" if isinstance(n, IntNode) else "float", n)
    if isinstance(n, StrNode):
        return _constrained("str", n)
    if isinstance(n, BytesNode):
        return _constrained(n.kind, n)
    if isinstance(n, TemporalNode):
        tz = {True: "{tz}", False: "{no tz}", None: ""}[n.tz]
        return f"{n.kind}{tz}"
    if isinstance(n, LiteralNode):
        e = model.enum(n)
        return e.name if e is not None else " | ".join(json.dumps(v) for v in n.values)
    if isinstance(n, SeqNode):
        return _constrained(f"{n.kind}[{_type(n.item, home, model)}]", n)
    if isinstance(n, TupleNode):
        return "tuple[" + ", ".join(_type(i, home, model) for i in n.items) + "]"
    if isinstance(n, DictNode):
        inner = f"dict[{_type(n.key, home, model)}, {_type(n.value, home, model)}]"
        return _constrained(inner, n)
    if isinstance(n, UnionNode):
        return " | ".join(_type(m, home, model) for m in n.types)
    assert isinstance(n, RefNode)
    return model.ref(home, n.index).name
