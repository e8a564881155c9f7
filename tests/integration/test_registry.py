"""The registry, ``aqnode introspect``, ``aqnode generate`` and ``validate=True`` against
real nodes (SPEC 11).

Two nodes in two service groups publish to one Redis under a key prefix of this module:
``bank`` runs ``aqnode.examples.bank``, ``shop`` runs ``tests.handlers.orders`` (nested
structs, optional fields, lists, dicts, enums, literals, a tagged union, a positional
struct, numeric and string constraints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import types
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from aqnode.api import Message, Query, entity_type_of, id_field_of
from aqnode.client import Client, SyncClient
from aqnode.errors import AqError, ValidationFailed
from aqnode.examples import bank as bank_module
from aqnode.registry import Snapshot, merge
from aqnode.wal.registry import RegistryStore
from aqnode.wal.url import async_client, sync_client
from tests.handlers import orders as orders_module
from tests.integration.test_dlq_offline import managed_redis_servers
from tests.node_fixture import Node, node_env, running_node
from tests.redis_cluster_fixture import RedisClusterServer
from tests.redis_fixture import RedisServer, free_port, wait_for
from tests.tsc_fixture import check_strict, tsc

PREFIX = f"regtest-{secrets.token_hex(3)}"  # this module's registry, apart from others'


@dataclass
class Groups:
    bank: Node
    shop: Node
    redis_url: str
    metrics: str  #: the shop node's /metrics URL

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--redis-url", self.redis_url, "--key-prefix", PREFIX, cwd=cwd)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqnode", *args],
        capture_output=True,
        text=True,
        env=node_env(None),
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def read(redis_url: str, prefix: str = PREFIX) -> Snapshot:
    client = redis.Redis.from_url(redis_url)
    try:
        view = RegistryStore(client, prefix, 86400).read_sync()
    finally:
        client.close()
    return merge(view.records, view.catalogues)


def published(snapshot: Snapshot, *groups: str) -> bool:
    return {g.name for g in snapshot.groups} >= set(groups)


@pytest.fixture(scope="module")
def groups(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Groups]:
    redis_server.ensure_running()
    url = redis_server.url
    metrics_port = free_port()
    common = {"shards": 1, "key_prefix": PREFIX}
    with contextlib.ExitStack() as stack:
        bank = stack.enter_context(
            running_node(
                tmp_path_factory.mktemp("bank"),
                url,
                handlers=["aqnode.examples.bank"],
                service_group="bank",
                server_id="reg-bank-1",
                **common,
            )
        )
        shop = stack.enter_context(
            running_node(
                tmp_path_factory.mktemp("shop"),
                url,
                handlers=["tests.handlers.orders"],
                service_group="shop",
                server_id="reg-shop-1",
                metrics_listen=f"127.0.0.1:{metrics_port}",
                **common,
            )
        )
        wait_for(lambda: published(read(url), "bank", "shop"), timeout=10)
        yield Groups(bank, shop, url, f"http://127.0.0.1:{metrics_port}/metrics")


def messages_of(module: types.ModuleType) -> dict[tuple[str, str], tuple[str, str]]:
    """(entity type, message) -> (kind, id field) for every message class a module defines."""
    found = {}
    for value in vars(module).values():
        if not (isinstance(value, type) and issubclass(value, Message)):
            continue
        etype = entity_type_of(value)
        if etype is not None and value.__module__ == module.__name__:
            kind = "query" if issubclass(value, Query) else "command"
            found[(etype, value.__name__)] = (kind, id_field_of(value) or "")
    return found


# --- introspect ------------------------------------------------------------------------------

GOOD_ORDER: dict[str, Any] = {
    "order_id": "o-1",
    "customer": "c-1",
    "lines": [{"sku": "SKU-1", "quantity": 2, "price": [250, "EUR"]}],
    "ship_to": {"streetName": "Main 1", "city": "Town", "postalCode": "12345"},
    "priority": "high",
    "level": 2,
    "channel": "phone",
    "tags": {"vip": 1},
    "discount": 0.1,
    "gift": {"kind": "card", "text": "hi"},
    "coupons": ["A"],
    "extra": {"x": [1, 2]},
}
#: (what is wrong, the field the node names, what is changed in GOOD_ORDER)
BAD_ORDERS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "quantity below its minimum",
        "lines[0].quantity",
        {"lines": [{"sku": "S", "quantity": 0, "price": [1]}]},
    ),
    ("no lines", "lines", {"lines": []}),
    ("an unknown priority", "priority", {"priority": "urgent"}),
    ("an int enum given a string", "level", {"level": "2"}),
    ("a literal outside its values", "channel", {"channel": "fax"}),
    ("a discount above 0.5", "discount", {"discount": 0.9}),
    (
        "a postal code against its pattern",
        "ship_to.postalCode",
        {"ship_to": {"streetName": "a", "city": "b", "postalCode": "1"}},
    ),
    (
        "an unknown field in a line",
        "lines[0]",
        {"lines": [{"sku": "S", "quantity": 1, "price": [1], "colour": "red"}]},
    ),
    ("a gift of an unknown kind", "gift", {"gift": {"kind": "box"}}),
    ("a dict of the wrong values", "tags[...]", {"tags": {"vip": "one"}}),
    (
        "a negative price",
        "lines[0].price[0]",
        {"lines": [{"sku": "S", "quantity": 1, "price": [-1]}]},
    ),
]


def test_introspect_lists_every_type_and_message_of_both_handler_modules(groups: Groups) -> None:
    shown = groups.cli("introspect", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    listed = {
        (et["name"], m["name"]): (et["service_group"], m["kind"], m["id_field"])
        for et in doc["entity_types"]
        for m in et["messages"]
    }
    expected = {key: ("bank", *value) for key, value in messages_of(bank_module).items()} | {
        key: ("shop", *value) for key, value in messages_of(orders_module).items()
    }
    assert listed == expected
    assert {et["name"]: et["id_field"] for et in doc["entity_types"]} == {
        "account": "account_id",
        "customer": "customer_id",
        "order": "order_id",
    }
    nodes = {g["name"]: [n["server_id"] for n in g["nodes"]] for g in doc["groups"]}
    assert nodes == {"bank": ["reg-bank-1"], "shop": ["reg-shop-1"]}
    for et in doc["entity_types"]:
        for m in et["messages"]:
            jsonschema.Draft202012Validator.check_schema(m["schema"])
            jsonschema.Draft202012Validator.check_schema(m["reply_schema"])

    text = groups.cli("introspect")
    assert text.returncode == 0, text.stderr
    for line in (
        "service group bank",
        "service group shop",
        "node reg-shop-1",
        "entity type order  (service group shop, id field order_id)",
        "  command PlaceOrder -> OrderView",
        "  query GetOrder -> OrderView | None",
        "      quantity: int{ge 1, le 1000}",
        '  Priority  enum: LOW = "low", HIGH = "high"',
    ):
        assert line in text.stdout, (line, text.stdout)


def test_the_schemas_accept_what_the_node_accepts_and_reject_what_it_refuses(
    groups: Groups,
) -> None:
    doc = json.loads(groups.cli("introspect", "--json").stdout)
    schemas = {
        (et["name"], m["name"]): (m["schema"], m["reply_schema"])
        for et in doc["entity_types"]
        for m in et["messages"]
    }
    place, place_reply = schemas[("order", "PlaceOrder")]
    with groups.shop.client() as bus:
        jsonschema.validate(GOOD_ORDER, place)
        reply = bus.enqueue_and_wait_raw(
            "order", "PlaceOrder", "o-1", json.dumps(GOOD_ORDER).encode()
        )
        jsonschema.validate(reply, place_reply)  # the reply as it comes back
        assert reply["total"] == [450, "EUR"] and reply["gift"] == {"kind": "card", "text": "hi"}
        _, get_reply = schemas[("order", "GetOrder")]
        jsonschema.validate(bus.enqueue_and_wait_raw("order", "GetOrder", "nope", {}), get_reply)
        for what, field, change in BAD_ORDERS:
            bad = {**GOOD_ORDER, **change}
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, place)
            with pytest.raises(ValidationFailed) as refused:
                bus.enqueue_raw("order", "PlaceOrder", "o-1", json.dumps(bad).encode())
            assert refused.value.code == "INVALID_PAYLOAD", what
            assert field in refused.value.message, (what, refused.value.message)
    deposit, balance = schemas[("account", "Deposit")]
    jsonschema.validate({"account_id": "a", "amount": 5}, deposit)
    for bad_deposit in ({"account_id": "a"}, {"account_id": "a", "amount": "5"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad_deposit, deposit)
    with groups.bank.client() as bus:
        jsonschema.validate(
            bus.enqueue_and_wait_raw("account", "Deposit", "a-1", {"amount": 5}), balance
        )


# --- generate --------------------------------------------------------------------------------

FRESH_SCRIPT = """
import importlib.util, sys
assert importlib.util.find_spec("tests") is None, "the handlers' code is importable"
import shop_api
from aqnode.client import SyncClient
with SyncClient(sys.argv[1]) as bus:
    order = shop_api.PlaceOrder(
        order_id="o-9",
        customer="c-9",
        lines=[shop_api.Line(sku="S", quantity=3, price=shop_api.Money(cents=100))],
        ship_to=shop_api.Address(street_name="Main 1", city="Town", postal_code="12345"),
        priority=shop_api.Priority.HIGH,
        gift=shop_api.GiftWrap(paper="gold"),
    )
    view = bus.enqueue_and_wait(order)
    assert type(view) is shop_api.OrderView, type(view)
    assert view.total == shop_api.Money(cents=300, currency="EUR"), view.total
    assert view.priority is shop_api.Priority.HIGH and view.level is shop_api.Level.ONE
    assert view.ship_to == order.ship_to and view.ship_to.country == "DE"
    assert type(view.gift) is shop_api.GiftWrap and view.history == [("placed", 1.5)]
    again = bus.enqueue_and_wait(shop_api.GetOrder(order_id="o-9"))
    assert again == view, again
    assert bus.enqueue_and_wait(shop_api.GetOrder(order_id="none")) is None
    assert bus.enqueue_and_wait(shop_api.CustomerOrders(customer_id="c", limit=2)) == ["c-0", "c-1"]
    assert bus.enqueue_and_wait(shop_api.CancelOrder(order_id="o-9")) is None
    assert bus.enqueue_and_wait(shop_api.GetOrder(order_id="o-9")).status == "cancelled"
assert not [m for m in sys.modules if m.startswith("tests")]
print("typed replies ok")
"""


def test_generated_python_gives_typed_replies_in_a_fresh_interpreter(
    groups: Groups, tmp_path: Path
) -> None:
    out = tmp_path / "gen"
    made = groups.cli(
        "generate", "--python", "-o", str(out), "--module", "shop_api",
        "--entity-type", "order", "--entity-type", "customer",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    source = (out / "shop_api.py").read_text()
    assert source.startswith("# Generated by `aqnode generate --python`")
    assert "service group 'shop': catalogue sha256:" in source
    assert "account" not in source  # only the entity types asked for
    # A fresh interpreter that has aqnode and the generated module, not the handlers.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AQ_TEST_REDIS_URL")}
    env["PYTHONPATH"] = str(out)
    ran = subprocess.run(
        [sys.executable, "-c", FRESH_SCRIPT, groups.shop.address],
        capture_output=True,
        text=True,
        cwd=out,
        env=env,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "typed replies ok" in ran.stdout


def test_generating_twice_gives_the_same_bytes(groups: Groups, tmp_path: Path) -> None:
    outputs = []
    for name in ("first", "second"):
        made = groups.cli(
            "generate", "--python", "--json-schema", "--ts", "-o", str(tmp_path / name)
        )
        assert made.returncode == 0, made.stderr
        outputs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    assert outputs[0] == outputs[1]
    names = set(outputs[0])
    assert "aqnode_messages.py" in names and "aqnode_messages.ts" in names  # two groups
    assert {"order.PlaceOrder.json", "order.PlaceOrder.reply.json"} <= names
    assert {"account.Deposit.json", "account.Deposit.reply.json"} <= names
    schema = json.loads(outputs[0]["order.PlaceOrder.json"])
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "order.PlaceOrder" in schema["$comment"] and "sha256:" in schema["$comment"]
    jsonschema.validate(GOOD_ORDER, schema)


def test_the_generated_typescript_passes_tsc_strict(groups: Groups, tmp_path: Path) -> None:
    compiler = tsc()
    made = groups.cli("generate", "--ts", "-o", str(tmp_path), "--module", "api")
    assert made.returncode == 0, made.stderr
    (tmp_path / "use.ts").write_text(
        'import { EntityTypes, PlaceOrder, Priority } from "./api";\n'
        "export const order: PlaceOrder = "
        f"{json.dumps({**GOOD_ORDER, 'priority': 'high'})};\n"
        "export const high: Priority = Priority.HIGH;\n"
        'type Reply = EntityTypes["order"]["PlaceOrder"]["reply"];\n'
        "export const total = (r: Reply): number => r.total[0];\n"
    )
    done = check_strict(compiler, tmp_path / "api.ts", tmp_path / "use.ts")
    assert done.returncode == 0, done.stdout + done.stderr


# --- validate=True ---------------------------------------------------------------------------


def rejected(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aqnode_messages_rejected_total{")
    )


def test_validate_true_refuses_before_sending_with_the_nodes_own_error(groups: Groups) -> None:
    cases: list[tuple[str, str, str, Any]] = [
        ("order", "PlaceOrder", "o-1", json.dumps({**GOOD_ORDER, **change}).encode())
        for _, _, change in BAD_ORDERS
    ]
    cases += [
        ("order", "PlaceOrder", "o-1", {"order_id": "o-1", "customer": "c"}),  # mapping, msgpack
        ("order", "PlaceOrder", "o-2", json.dumps(GOOD_ORDER).encode()),  # another entity id
        ("order", "Ship", "o-1", {}),
        ("parcel", "Ship", "p-1", {}),
        ("customer", "CustomerOrders", "c-1", {"limit": 0}),
    ]

    async def errors(validate: bool) -> list[AqError]:
        found = []
        async with Client(groups.shop.address, validate=validate) as bus:
            for entity_type, message, entity_id, data in cases:
                with pytest.raises(AqError) as refused:
                    await bus.enqueue_raw(entity_type, message, entity_id, data)
                found.append(refused.value)
        return found

    before = rejected(groups.metrics)
    from_node = asyncio.run(errors(validate=False))
    sent = rejected(groups.metrics)
    assert sent - before == len(cases)  # the node refused each one
    from_client = asyncio.run(errors(validate=True))
    assert rejected(groups.metrics) == sent  # nothing reached the node
    for node_error, client_error in zip(from_node, from_client, strict=True):
        assert isinstance(client_error, ValidationFailed)
        if client_error.code == "UNKNOWN_ENTITY_TYPE":
            # The registry knows more entity types than this node handles; the code is
            # the same, the list of known ones in the message is the registry's.
            assert node_error.code == client_error.code
        else:
            assert client_error.to_dict() == node_error.to_dict()
    codes = {e.code for e in from_client}
    assert codes == {"INVALID_PAYLOAD", "UNKNOWN_MESSAGE", "UNKNOWN_ENTITY_TYPE"}
    fields = {e.details.get("field") for e in from_client}
    assert fields >= {"lines[0].quantity", "priority", "order_id", "limit"}

    # Valid payloads go through, from the async and the blocking client.
    with SyncClient(groups.shop.address, validate=True) as bus:
        reply = bus.enqueue_and_wait_raw(
            "order", "PlaceOrder", "o-3", {**GOOD_ORDER, "order_id": "o-3"}
        )
        assert reply["order_id"] == "o-3"
        with pytest.raises(ValidationFailed, match="quantity"):
            bus.for_entity("order", "o-3").enqueue_raw(
                "PlaceOrder", json.dumps({**GOOD_ORDER, **BAD_ORDERS[0][2]}).encode()
            )


def test_validate_true_knows_other_groups_from_the_registry(groups: Groups) -> None:
    """A client of the bank node validates the shop's messages: the registry has them."""
    with SyncClient(groups.bank.address, validate=True) as bus:
        with pytest.raises(ValidationFailed) as refused:
            bus.enqueue_raw("order", "PlaceOrder", "o-1", {"order_id": "o-1"})
        assert refused.value.code == "INVALID_PAYLOAD"
        assert refused.value.details.get("field") == "customer"
        registry = bus.registry()
    assert [g.name for g in registry.groups] == ["bank", "shop"]
    assert registry.local_group == "bank"


# --- with the node stopped -------------------------------------------------------------------


def test_introspect_and_generate_work_after_the_node_stops(tmp_path: Path) -> None:
    """A node on its own managed Redis: once it stops, the commands start that Redis for
    their duration (as the dlq commands do) and leave none behind."""
    with running_node(
        tmp_path / "node",
        None,
        handlers=["aqnode.examples.bank", "tests.handlers.orders"],
        shards=1,
        service_group="both",
    ) as node:
        config = str(node.config_path)

        def listed() -> dict[str, Any] | None:
            shown = run_cli("introspect", "--json", "--config", config)
            assert shown.returncode == 0, shown.stderr
            doc: dict[str, Any] = json.loads(shown.stdout)
            return doc if doc["entity_types"] else None

        live = wait_for(listed, timeout=10)
        assert node.terminate() == 0
        assert managed_redis_servers(node) == []

    after = listed()
    assert after is not None and after["entity_types"] == live["entity_types"]
    names = {(et["name"], m["name"]) for et in after["entity_types"] for m in et["messages"]}
    assert set(messages_of(bank_module)) | set(messages_of(orders_module)) == names
    made = run_cli("generate", "--python", "-o", str(tmp_path / "gen"), "--config", config)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "gen" / "both_messages.py").exists()
    assert managed_redis_servers(node) == []


# --- the keys in Redis -----------------------------------------------------------------------


def test_entries_expire_after_their_ttl_and_share_one_hash_slot(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    prefix = f"expiry-{secrets.token_hex(3)}"

    async def publish(server_id: str, ttl_s: int) -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            store = RegistryStore(client, prefix, ttl_s)
            record = msgspec.msgpack.encode({"server_id": server_id, "catalogue": "sha256:x"})
            assert await store.publish(server_id, record, "sha256:x", b"catalogue")
            assert not await store.publish(server_id, record, "sha256:gone", None)
        finally:
            await client.aclose()

    asyncio.run(publish("old", 1))
    keys = {k.decode() for k in redis_client.keys(f"{prefix}:*")}
    assert keys == {
        f"{prefix}:{{reg}}:seen",
        f"{prefix}:{{reg}}:nodes",
        f"{prefix}:{{reg}}:cat:sha256:x",
    }
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one slot: Redis Cluster runs it
    assert all(0 < redis_client.pttl(k) <= 1000 for k in keys)
    # Unrefreshed past its TTL: readers leave it out, then Redis drops every key.
    store = RegistryStore(redis_client, prefix, 1)
    wait_for(lambda: not store.read_sync().records, timeout=5)
    wait_for(lambda: not redis_client.keys(f"{prefix}:*"), timeout=5)
    # A publish with a day's TTL removes an expired entry another node left behind.
    asyncio.run(publish("old", 86400))
    redis_client.zadd(f"{prefix}:{{reg}}:seen", {"older": 0})
    redis_client.hset(f"{prefix}:{{reg}}:nodes", "older", b"x")
    asyncio.run(publish("new", 86400))
    assert sorted(redis_client.zrange(f"{prefix}:{{reg}}:seen", 0, -1)) == [b"new", b"old"]
    assert sorted(redis_client.hkeys(f"{prefix}:{{reg}}:nodes")) == [b"new", b"old"]


def test_the_registry_runs_on_a_redis_cluster(redis_cluster: RedisClusterServer) -> None:
    """Published and read through redis+cluster:// as a node and the CLI do: the keys
    share one slot, so each script runs on the master that owns it."""
    redis_cluster.flush()

    async def publish() -> None:
        client = async_client(redis_cluster.url)
        try:
            store = RegistryStore(client, "aq", 86400)
            record = msgspec.msgpack.encode({"server_id": "n-1", "catalogue": "sha256:c"})
            assert await store.publish("n-1", record, "sha256:c", b"catalogue")
            assert await store.publish("n-1", record, "sha256:c", None)  # a refresh
            view = await store.read()
            assert [r for r, _ in view.records] == [record]
            assert view.catalogues == {"sha256:c": b"catalogue"}
        finally:
            await client.aclose()

    asyncio.run(publish())
    client = sync_client(redis_cluster.url)
    try:
        view = RegistryStore(client, "aq", 86400).read_sync()
    finally:
        client.close()
    assert view.catalogues == {"sha256:c": b"catalogue"}


# --- failures are one line -------------------------------------------------------------------


def test_cli_failures_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    for args, code in (
        (["introspect", "--redis-url", nowhere], 1),
        (["generate", "--python", "-o", str(tmp_path), "--redis-url", nowhere], 1),
        (["introspect", "--config", str(tmp_path / "missing.toml")], 1),
        (["introspect", "--redis-url", "ftp://x"], 1),
    ):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == code, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = run_cli("generate", "-o", str(tmp_path), "--redis-url", nowhere, cwd=tmp_path)
    assert done.returncode == 2 and "--python, --json-schema and/or --ts" in done.stderr
    done = run_cli("introspect", cwd=tmp_path)  # no config here, no --redis-url
    assert done.returncode == 1 and "--redis-url" in done.stderr
