"""Code generation from the registry (aqnode/codegen): what the generated code accepts,
what it is called, what it defaults to, and that it is the same bytes every time.

The registry entries here are made as a node makes them (describe, then catalogue_of,
then merge), from classes of this file and of the wiretypes zoo, without a node.
"""

from __future__ import annotations

import datetime
import enum
import importlib.util
import itertools
import json
import random
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import jsonschema
import msgspec
import msgspec.inspect as mi
import pytest
from msgspec import Meta

from aqnode import Command, Query, entity_type
from aqnode.api import entity_type_of, id_field_of, reply_type_of
from aqnode.bus import envelope_of
from aqnode.codegen import build, python, typescript
from aqnode.codegen import jsonschema as schema_gen
from aqnode.codegen.text import render as text_view
from aqnode.errors import ValidationFailed
from aqnode.registry import (
    NodeRecord,
    Snapshot,
    catalogue_of,
    decode_snapshot,
    digest_of,
    encode_catalogue,
    encode_snapshot,
    merge,
)
from aqnode.wiretypes import MessageEntry, describe
from tests.tsc_fixture import check_strict, tsc
from tests.unit.test_wiretypes import ZOO, gen, mutate

_modules = itertools.count()


def entries_of(classes: list[type[Any]]) -> list[MessageEntry]:
    """What a shard tells the supervisor about these message classes."""
    return [
        MessageEntry(
            entity_type_of(c) or "",
            c.__name__,
            "query" if issubclass(c, Query) else "command",
            id_field_of(c) or "",
            describe(c),
            describe(reply_type_of(c)),
        )
        for c in classes
    ]


def snapshot_of(groups: dict[str, list[type[Any]]], started: float = 1.0) -> Snapshot:
    """The registry as a reader gets it, with one node per group publishing ``classes``."""
    records, catalogues = [], {}
    for i, (group, classes) in enumerate(sorted(groups.items())):
        data = encode_catalogue(catalogue_of(entries_of(classes)))
        digest = digest_of(data)
        catalogues[digest] = data
        record = NodeRecord(
            server_id=f"node-{i}",
            service_group=group,
            address=f"127.0.0.1:{50000 + i}",
            version="test",
            started_at=started,
            catalogue=digest,
        )
        records.append((msgspec.msgpack.encode(record), started + 1))
    return merge(records, catalogues)


def load(source: str, tmp_path: Path) -> types.ModuleType:
    """Import generated source as a fresh module (from a file, as a user would)."""
    name = f"generated_{next(_modules)}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # msgspec resolves the annotations through it
    spec.loader.exec_module(module)
    return module


# --- the zoo, each type carried by a message of its own --------------------------------------


def _holder(cls: type[Any]) -> type[Any]:
    """``class Hold<Name>(Command[cls]): key: str; value: cls`` under entity type "zoo"."""

    def body(ns: dict[str, Any]) -> None:
        ns["__annotations__"] = {"key": str, "value": cls}

    holder = types.new_class(f"Hold{cls.__name__}", (Command[cls],), {}, body)  # type: ignore[valid-type]
    return entity_type("zoo", id_field="key")(holder)


HOLDERS = [_holder(c) for c in ZOO]


def test_generated_classes_accept_exactly_what_the_originals_accept(tmp_path: Path) -> None:
    """For seeded random payloads, valid and broken, the generated message decodes a
    payload iff the original does, and what it decodes is sent on as the original
    would have read it (defaults it does not know are left out, for the handler)."""
    module = load(python.render(build(snapshot_of({"zoo": HOLDERS})), "zoo"), tmp_path)
    for holder, cls in zip(HOLDERS, ZOO, strict=True):
        generated = getattr(module, holder.__name__)
        assert entity_type_of(generated) == "zoo" and id_field_of(generated) == "key"
        rng = random.Random(f"codegen-{cls.__name__}")
        info = mi.type_info(cls)
        both = 0
        for i in range(300):
            value = gen(info, rng)
            for _ in range(i % 3):
                value = mutate(value, rng)
            data = msgspec.json.encode({"key": "k", "value": value})
            try:
                original = msgspec.json.decode(data, type=holder)
            except msgspec.ValidationError:
                with pytest.raises(msgspec.ValidationError):
                    msgspec.json.decode(data, type=generated)
                continue
            mine = msgspec.json.decode(data, type=generated)
            # As the client sends it (an UNSET positional field cuts the array there).
            try:
                sent = envelope_of(mine).payload
            except ValidationFailed:  # an int beyond msgpack's range: the original's too
                with pytest.raises(OverflowError):
                    msgspec.msgpack.encode(original)
                continue
            again = msgspec.msgpack.decode(sent, type=holder)
            assert again == original, (cls, data)
            # The reply type is the original's too.
            reply = msgspec.json.encode(original.value)
            assert msgspec.json.decode(reply, type=reply_type_of(generated)) is not None
            both += 1
        assert both > 50, (cls, both)


def test_generating_twice_gives_the_same_bytes() -> None:
    snapshot = snapshot_of({"zoo": HOLDERS, "shop": [Place, Lookup, Get, GetOther]})
    again = decode_snapshot(encode_snapshot(snapshot))  # as the client receives it
    for make in (
        lambda s: python.render(build(s), "m"),
        lambda s: typescript.render(build(s)),
        lambda s: json.dumps(schema_gen.render(build(s)), sort_keys=True),
        lambda s: text_view(s, build(s), now=10.0),
    ):
        assert make(snapshot) == make(again) == make(snapshot)
    # Another node of the group with the same handlers publishes the same catalogue.
    assert snapshot_of({"zoo": HOLDERS}).groups[0].catalogue == (
        snapshot_of({"zoo": HOLDERS}, started=5.0).groups[0].catalogue
    )


# --- names, defaults, enums, replies ---------------------------------------------------------


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


class Item(msgspec.Struct):
    """An item of a basket.

    Second paragraph, with "quotes" kept."""

    sku: str
    qty: Annotated[int, Meta(ge=1)] = 1


class Detail(msgspec.Struct):
    sku: str
    count: int


class uuid(msgspec.Struct):
    flag: bool


Odd = TypedDict("Odd", {"first-name": str, "class": int})


@entity_type("basket", id_field="basket_id")
class Place(Command[list[Item]]):
    basket_id: str
    items: list[Item]
    tier: Tier = Tier.SILVER
    channel: Literal["web", "app", None] = None
    placed_at: datetime.datetime = msgspec.field(default_factory=datetime.datetime.now)
    weights: list[float] = msgspec.field(default_factory=lambda: [1.0, 2.0])  # user code
    dims: tuple[int, ...] = (1, 2)
    tags: list[str] = []
    limit: Annotated[float, Meta(ge=-0.5, multiple_of=0.5)] = 1.5
    odd: Odd | None = None
    clash: uuid | None = None


@entity_type("basket", id_field="basket_id")
class Lookup(Query[Place]):
    """A reply that is another message: Place must be defined first."""

    basket_id: str


@entity_type("basket", id_field="basket_id")
class Get(Query[Detail]):
    basket_id: str


class Item2(msgspec.Struct):  # another "Item": a different shape under the same name
    label: str


Item2.__name__ = Item2.__qualname__ = "Item"


@entity_type("shelf", id_field="shelf_id")
class GetOther(Query[Item2]):
    shelf_id: str


GetOther.__name__ = GetOther.__qualname__ = "Get"  # the same message name, another type


def test_clashing_names_are_told_apart_and_messages_keep_their_wire_names(
    tmp_path: Path,
) -> None:
    module = load(
        python.render(build(snapshot_of({"shop": [Place, Lookup, Get, GetOther]})), "m"), tmp_path
    )
    # Two messages named Get: the second is bound under another name, still "Get" on the wire.
    assert module.Get.__name__ == "Get" and entity_type_of(module.Get) == "basket"
    assert module.Get_shelf.__name__ == "Get" and entity_type_of(module.Get_shelf) == "shelf"
    env = envelope_of(module.Get_shelf(shelf_id="s-1"))
    assert (env.entity_type, env.message, env.entity_id) == ("shelf", "Get", "s-1")
    # Two structs named Item: two classes; a struct named like an import is renamed.
    assert module.Item is not module.Item_2
    fields = {*module.Item.__struct_fields__, *module.Item_2.__struct_fields__}
    assert fields == {"sku", "qty", "label"}
    assert module.uuid_2.__struct_fields__ == ("flag",)
    assert "An item of a basket." in (module.Item.__doc__ or "") + (module.Item_2.__doc__ or "")
    # A reply that is another message decodes to the generated class.
    assert reply_type_of(module.Lookup) is module.Place


def test_defaults_the_registry_knows_are_written_and_the_others_left_to_the_handler(
    tmp_path: Path,
) -> None:
    module = load(python.render(build(snapshot_of({"shop": [Place]})), "m"), tmp_path)
    msg = module.Place(basket_id="b", items=[])
    assert msg.tier is module.Tier.SILVER and msg.channel is None and msg.limit == 1.5
    assert msg.dims == (1, 2) and msg.tags == []
    # Factories are user code: they run where the handler runs (datetime.now, a lambda).
    assert msg.placed_at is msgspec.UNSET and msg.weights is msgspec.UNSET
    sent = msgspec.json.decode(msgspec.json.encode(msg))
    assert "placed_at" not in sent and "weights" not in sent
    assert msgspec.json.decode(msgspec.json.encode(msg), type=Place).weights == [1.0, 2.0]
    before = datetime.datetime.now()
    assert msgspec.json.decode(msgspec.json.encode(msg), type=Place).placed_at >= before
    # A TypedDict's keys that are no identifiers keep their names on the wire.
    odd = msgspec.json.decode(b'{"first-name": "a", "class": 1}', type=module.Odd)
    assert msgspec.json.decode(msgspec.json.encode(odd)) == {"first-name": "a", "class": 1}


def test_a_reply_cycle_between_messages_is_refused_with_a_reason() -> None:
    class Ping(Query[Any]):
        key: str

    class Pong(Query[Ping]):
        key: str

    Ping.__orig_bases__ = (Query[Pong],)  # type: ignore[misc] # Ping replies with Pong
    for cls in (Ping, Pong):
        entity_type("game", id_field="key")(cls)
    with pytest.raises(ValueError, match="refer to each other"):
        python.render(build(snapshot_of({"g": [Ping, Pong]})), "m")


# --- TypeScript, JSON Schema, the text view --------------------------------------------------


def test_the_typescript_of_every_shape_passes_tsc_strict(tmp_path: Path) -> None:
    compiler = tsc()
    snapshot = snapshot_of({"zoo": HOLDERS, "shop": [Place, Lookup, Get, GetOther]})
    (tmp_path / "messages.ts").write_text(typescript.render(build(snapshot)))
    (tmp_path / "use.ts").write_text(
        'import { EntityTypes, Place, Tier } from "./messages";\n'
        'const p: Place = { basket_id: "b", items: [{ sku: "s" }], tier: Tier.GOLD };\n'
        'type R = EntityTypes["basket"]["Lookup"]["reply"];\n'
        "const r: R = p;\n"
        "export { r };\n"
    )
    done = check_strict(compiler, tmp_path / "messages.ts", tmp_path / "use.ts")
    assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "bad.ts").write_text(
        'import { Place } from "./messages";\n'
        "export const p: Place = { basket_id: 1, items: [] };\n"
    )
    assert check_strict(compiler, tmp_path / "bad.ts").returncode != 0


def test_every_json_schema_is_a_valid_draft_2020_12_schema_saying_where_it_comes_from() -> None:
    files = schema_gen.render(build(snapshot_of({"zoo": HOLDERS, "shop": [Place, Get, GetOther]})))
    assert "basket.Get.json" in files and "shelf.Get.reply.json" in files
    assert len(files) == 2 * (len(HOLDERS) + 3)
    for name, text in files.items():
        schema = json.loads(text)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        assert "aqnode generate --json-schema" in schema["$comment"], name
        assert "catalogue sha256:" in schema["$comment"], name
    place = json.loads(files["basket.Place.json"])
    good = {"basket_id": "b", "items": [{"sku": "s", "qty": 2}], "tier": "gold"}
    jsonschema.validate(good, place)
    for bad in (
        {"items": []},  # no basket_id
        {"basket_id": "b", "items": [{"sku": "s", "qty": 0}]},  # qty >= 1
        {"basket_id": "b", "items": [], "tier": "bronze"},  # not a Tier
        {"basket_id": "b", "items": [], "channel": "fax"},  # not a literal
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, place)


def test_the_text_view_lists_groups_types_messages_fields_and_replies() -> None:
    snapshot = snapshot_of({"shop": [Place, Lookup, Get]})
    text = text_view(snapshot, build(snapshot), now=100.0)
    assert "service group shop" in text and "node node-0  127.0.0.1:50000" in text
    assert "entity type basket  (service group shop, id field basket_id)" in text
    assert "  command Place -> list[Item]" in text and "  query Lookup -> Place" in text
    assert "      qty: int{ge 1} = 1" in text and 'tier: Tier = "silver"' in text
    assert "placed_at: datetime  (optional)" in text
    assert '  Tier  enum: GOLD = "gold", SILVER = "silver"' in text


# --- the registry's merge --------------------------------------------------------------------


def test_a_group_shows_its_newest_nodes_catalogue_and_damaged_entries_are_left_out() -> None:
    old = encode_catalogue(catalogue_of(entries_of([Get])))
    new = encode_catalogue(catalogue_of(entries_of([Get, Place])))

    def record(server_id: str, started: float, data: bytes) -> bytes:
        return msgspec.msgpack.encode(
            NodeRecord(
                server_id=server_id,
                service_group="shop",
                address="h:1",
                version="v",
                started_at=started,
                catalogue=digest_of(data),
            )
        )

    snapshot = merge(
        [(record("b", 2.0, new), 3.0), (record("a", 1.0, old), 3.0), (b"\xc1junk", 3.0)],
        {digest_of(old): old, digest_of(new): new, "sha256:bad": b"junk"},
    )
    (group,) = snapshot.groups
    assert [n.server_id for n in group.nodes] == ["a", "b"]
    assert group.catalogue == digest_of(new)
    assert [m.name for m in group.entity_types[0].messages] == ["Get", "Place"]
    assert snapshot.introspect()["entity_types"][0]["messages"][0]["schema"]["$ref"] == (
        "#/$defs/Get"
    )
