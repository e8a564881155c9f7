"""The registry (SPEC 11) as data: what each node handles, published to Redis.

Shared by the supervisor, which publishes; the CLI, which reads it (``aqnode introspect``,
``aqnode generate``); and the client, which validates raw payloads against it
(``Client(..., validate=True)``). Nothing here talks to Redis (``aqnode/wal/registry.py``
stores the bytes) or runs user code: everything is built from the shards' catalogue as
data (:class:`aqnode.wiretypes.MessageEntry`).

What a node publishes, refreshed every :data:`REFRESH_S` and kept :data:`TTL_S` after its
last refresh (so the entries of a group gone for longer than a day expire):

- a :class:`NodeRecord`: its server id, service group, address, version, start time, and
  the digest of its catalogue;
- its :class:`PublishedCatalogue`, stored once per digest: every entity type it handles
  with its id field and messages, each with its kind, the JSON Schemas (draft 2020-12,
  made by msgspec) of its payload and reply, and their wire descriptions, from which a
  reader rebuilds msgspec types (validation, code generation).

A reader merges the records into a :class:`Snapshot`: one :class:`GroupInfo` per service
group with its nodes and the catalogue of its most recently started node (in a rolling
deploy, the newest code).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from aqnode.wiretypes import MessageEntry, TypeDesc, rebuild

__all__ = [
    "REFRESH_S",
    "SCHEMA_DIALECT",
    "TTL_S",
    "EntityTypeInfo",
    "GroupInfo",
    "MessageInfo",
    "NodeInfo",
    "NodeRecord",
    "PublishedCatalogue",
    "Snapshot",
    "catalogue_of",
    "digest_of",
    "merge",
]

TTL_S = 86400  #: seconds an entry stays after its node's last refresh
REFRESH_S = 60  #: seconds between a node's refreshes of its entry
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of the stored structs: unknown fields are ignored, so that a newer aqnode may
    add some without breaking an older reader."""


class MessageInfo(_Record, frozen=True, kw_only=True):
    name: str
    kind: str  #: "command" or "query"
    id_field: str
    schema: str  #: the payload's JSON Schema, as JSON text
    reply_schema: str  #: the reply's JSON Schema, as JSON text
    payload: TypeDesc  #: the payload's wire description (aqnode.wiretypes)
    reply: TypeDesc  #: the reply's


class EntityTypeInfo(_Record, frozen=True, kw_only=True):
    name: str
    id_field: str  #: the messages' entity id field (the most common, if they differ)
    messages: tuple[MessageInfo, ...]


class PublishedCatalogue(_Record, frozen=True, kw_only=True):
    """Everything one node handles, sorted by names (equal handler sets, equal bytes)."""

    entity_types: tuple[EntityTypeInfo, ...]


class NodeRecord(_Record, frozen=True, kw_only=True):
    """One node's entry, next to the catalogue it points to by digest."""

    server_id: str
    service_group: str
    address: str
    version: str
    started_at: float  #: unix seconds
    catalogue: str  #: the digest of its PublishedCatalogue


class NodeInfo(_Record, frozen=True, kw_only=True):
    server_id: str
    address: str
    version: str
    started_at: float
    last_seen: float  #: unix seconds (Redis time) of its last publish
    catalogue: str


class GroupInfo(_Record, frozen=True, kw_only=True):
    name: str
    catalogue: str  #: the digest of the catalogue shown (its newest node's)
    nodes: tuple[NodeInfo, ...]
    entity_types: tuple[EntityTypeInfo, ...]


class Snapshot(_Record, frozen=True, kw_only=True):
    """The registry as read: every service group with a live entry."""

    groups: tuple[GroupInfo, ...]
    #: set by a node serving the snapshot: its own group, whose types it validates
    local_group: str = ""

    def entity_types(self) -> Iterator[tuple[GroupInfo, EntityTypeInfo]]:
        for group in self.groups:
            for et in group.entity_types:
                yield group, et

    def select(self, entity_types: Iterable[str]) -> Snapshot:
        """Only these entity types (KeyError naming the first unknown one)."""
        wanted = set(entity_types)
        known = {et.name for _, et in self.entity_types()}
        missing = sorted(wanted - known)
        if missing:
            raise KeyError(missing[0])
        groups = []
        for group in self.groups:
            kept = tuple(et for et in group.entity_types if et.name in wanted)
            if kept:
                groups.append(msgspec.structs.replace(group, entity_types=kept))
        return msgspec.structs.replace(self, groups=tuple(groups))

    def message_entries(self) -> list[MessageEntry]:
        """Every message as the node's validator takes it. An entity type that several
        groups handle is taken from the local group, else from the first by name."""
        chosen: dict[str, EntityTypeInfo] = {}
        for _group, et in sorted(
            self.entity_types(), key=lambda g: (g[0].name != self.local_group, g[0].name)
        ):
            chosen.setdefault(et.name, et)
        return [
            MessageEntry(et.name, m.name, m.kind, m.id_field, m.payload, m.reply)
            for et in chosen.values()
            for m in et.messages
        ]

    def introspect(self) -> dict[str, Any]:
        """The document ``aqnode introspect --json`` prints (SPEC 11, plus ``groups``)."""
        return {
            "entity_types": [
                {
                    "name": et.name,
                    "service_group": group.name,
                    "id_field": et.id_field,
                    "messages": [
                        {
                            "name": m.name,
                            "kind": m.kind,
                            "id_field": m.id_field,
                            "schema": json.loads(m.schema),
                            "reply_schema": json.loads(m.reply_schema),
                        }
                        for m in et.messages
                    ],
                }
                for group, et in self.entity_types()
            ],
            "groups": [
                {
                    "name": group.name,
                    "catalogue": group.catalogue,
                    "nodes": [msgspec.to_builtins(n) for n in group.nodes],
                }
                for group in self.groups
            ],
        }


# ---- publishing ---------------------------------------------------------------------------


def catalogue_of(entries: Iterable[MessageEntry]) -> PublishedCatalogue:
    """A node's catalogue as published: sorted, with the JSON Schemas made from the wire
    descriptions (the supervisor has no user class to ask)."""
    by_type: dict[str, list[MessageEntry]] = {}
    for entry in entries:
        by_type.setdefault(entry.entity_type, []).append(entry)
    types = []
    for name in sorted(by_type):
        messages = sorted(by_type[name], key=lambda e: e.name)
        id_fields = Counter(e.id_field for e in messages)
        id_field = min(id_fields, key=lambda f: (-id_fields[f], f))
        types.append(
            EntityTypeInfo(
                name=name,
                id_field=id_field,
                messages=tuple(
                    MessageInfo(
                        name=e.name,
                        kind=e.kind,
                        id_field=e.id_field,
                        schema=schema_text(e.payload),
                        reply_schema=schema_text(e.reply),
                        payload=e.payload,
                        reply=e.reply,
                    )
                    for e in messages
                ),
            )
        )
    return PublishedCatalogue(entity_types=tuple(types))


def schema_of(desc: TypeDesc) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the type ``desc`` describes, made by msgspec
    from a documented rebuild (defaults and enum names shown)."""
    try:
        schema: dict[str, Any] = msgspec.json.schema(rebuild(desc, documented=True))
    except Exception as exc:  # a type msgspec has no schema for: say so, accept anything
        return {
            "$schema": SCHEMA_DIALECT,
            "$comment": f"no JSON Schema for this type ({type(exc).__name__}: {exc})",
        }
    return {"$schema": SCHEMA_DIALECT, **schema}


def schema_text(desc: TypeDesc) -> str:
    return json.dumps(schema_of(desc), sort_keys=True, separators=(",", ":"))


def encode_catalogue(catalogue: PublishedCatalogue) -> bytes:
    return msgspec.msgpack.encode(catalogue)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- reading ------------------------------------------------------------------------------


def merge(
    records: Iterable[tuple[bytes, float]], catalogues: dict[str, bytes], local_group: str = ""
) -> Snapshot:
    """The registry from what Redis holds: ``records`` are (NodeRecord bytes, last seen in
    unix seconds); ``catalogues`` maps digests to PublishedCatalogue bytes. Entries that
    no longer decode (another aqnode version, a damaged key) are left out."""
    decoded: dict[str, PublishedCatalogue] = {}
    for digest, data in catalogues.items():
        try:
            decoded[digest] = msgspec.msgpack.decode(data, type=PublishedCatalogue)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    groups: dict[str, list[NodeInfo]] = {}
    for data, last_seen in records:
        try:
            rec = msgspec.msgpack.decode(data, type=NodeRecord)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        groups.setdefault(rec.service_group, []).append(
            NodeInfo(
                server_id=rec.server_id,
                address=rec.address,
                version=rec.version,
                started_at=rec.started_at,
                last_seen=last_seen,
                catalogue=rec.catalogue,
            )
        )
    out = []
    for name in sorted(groups):
        nodes = tuple(sorted(groups[name], key=lambda n: n.server_id))
        with_catalogue = [n for n in nodes if n.catalogue in decoded]
        if not with_catalogue:
            continue
        newest = max(with_catalogue, key=lambda n: (n.started_at, n.server_id))
        out.append(
            GroupInfo(
                name=name,
                catalogue=newest.catalogue,
                nodes=nodes,
                entity_types=decoded[newest.catalogue].entity_types,
            )
        )
    return Snapshot(groups=tuple(out), local_group=local_group)


def with_local(snapshot: Snapshot, group: str, node: NodeInfo, catalogue: bytes) -> Snapshot:
    """``snapshot`` with ``group`` shown as this node handles it (what it validates with,
    even before its own publish landed or while Redis is away)."""
    mine = msgspec.msgpack.decode(catalogue, type=PublishedCatalogue)
    groups = [g for g in snapshot.groups if g.name != group]
    old = next((g for g in snapshot.groups if g.name == group), None)
    nodes = [n for n in (old.nodes if old else ()) if n.server_id != node.server_id]
    groups.append(
        GroupInfo(
            name=group,
            catalogue=node.catalogue,
            nodes=tuple(sorted([*nodes, node], key=lambda n: n.server_id)),
            entity_types=mine.entity_types,
        )
    )
    groups.sort(key=lambda g: g.name)
    return Snapshot(groups=tuple(groups), local_group=group)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return msgspec.msgpack.encode(snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    return msgspec.msgpack.decode(data, type=Snapshot)
