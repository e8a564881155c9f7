"""Hostile input, from a seeded generator: deep, large, odd and broken payloads, ids and
names, through the Python client and through raw gRPC (SPEC 4, 8, 9).

The contract under test (SPEC 8): no input, however deep, large or odd, hangs a call,
restarts a shard or ends the supervisor; it is refused with a code for that message
alone, and a refused message leaves nothing in Redis. A payload over
``max_payload_bytes`` gets ``PAYLOAD_TOO_LARGE``; an entity id or message id over
``max_id_bytes`` gets ``INVALID_PAYLOAD`` naming the field. Valid messages sent in the
same batches succeed and run. Every test collects all violations before it fails, so a
run lists every kind of input the node mishandles.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
import redis
from google.protobuf.message import DecodeError

from aqnode.client import Client
from aqnode.errors import AqError
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from tests.node_fixture import NODE_ID, Node, running_node
from tests.redis_fixture import wait_for

SEED = 20240607
LIMIT = 64 * 1024  #: max_payload_bytes of the node under test
MAX_ID = 1024  #: max_id_bytes (the SPEC default, set explicitly)
JSON_CT = "application/json"
MSGPACK_CT = "application/msgpack"
PREFIX = f"aq:{{{NODE_ID}}}:"
WAIT_MS = 4000  #: the node-side reply timeout of waiting calls
CALL_DEADLINE_S = 8.0  #: a call (or a stream's batch) still unanswered by then hangs
HANG_BUDGET = 1  #: batches that may hang (per way in) before a test stops sending
RANDOM_CASES = 150  #: drawn cases per test, on top of the fixed ones
#: an int field holding an extreme value: refused, or run (and a reply too big to encode
#: is the handler's failure)
BIG_INT = frozenset({"ok", "INVALID_PAYLOAD", "HANDLER_ERROR"})
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
ANY_CODE = frozenset(
    {
        "UNKNOWN_ENTITY_TYPE",
        "UNKNOWN_MESSAGE",
        "INVALID_PAYLOAD",
        "QUEUE_DEPTH_EXCEEDED",
        "WORKER_LIMIT_EXCEEDED",
        "REDIS_UNAVAILABLE",
        "REPLY_TIMEOUT",
        "INTERRUPTED",
        "HANDLER_ERROR",
        "SELF_WAIT",
        "DRAINING",
        "STALE_EPOCH",
        "MASTER_REBUILDING",
        "FORWARD_HOPS_EXCEEDED",
        "UNAUTHENTICATED",
        "PAYLOAD_TOO_LARGE",
        "UNAVAILABLE",
    }
)


# ---- the cases -----------------------------------------------------------------------


@dataclass
class Case:
    """One send. ``allowed`` holds the acceptable results: SPEC codes, and "ok"."""

    label: str
    payload: bytes | dict[str, Any]  # a dict goes through the client's mapping path
    content_type: str | None = JSON_CT
    entity_type: str = "counter"
    message: str = "Incr"
    entity_id: str = ""
    message_id: str = ""  # "" : the test gives it one
    allowed: frozenset[str] = frozenset({"INVALID_PAYLOAD"})
    fields: tuple[str, ...] = ()  # with INVALID_PAYLOAD: the error must name one of these

    def wire(self) -> tuple[bytes, str]:
        """The payload and content type as they go over the wire."""
        if isinstance(self.payload, dict):
            return msgspec.msgpack.encode(self.payload), MSGPACK_CT
        return self.payload, JSON_CT if self.content_type is None else self.content_type


def sized(case: Case) -> Case:
    """Over the payload limit, the only right answer is PAYLOAD_TOO_LARGE."""
    payload, _ = case.wire()
    if len(payload) > LIMIT:
        case.allowed = frozenset({"PAYLOAD_TOO_LARGE"})
    return case


def nest_json(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def nest_msgpack(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"\x91" * depth + b"\x90"  # fixarray(1) ... fixarray(0)
    return b"\x81\xa1a" * depth + b"\x01"  # fixmap(1) {"a": ...} ... 1


def obj(name: str, **more: Any) -> bytes:
    return json.dumps({"name": name, **more}).encode()


def mp_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map from already-encoded keys and values."""
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def mp(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def fixed_cases(tag: str) -> list[Case]:
    """The cases every run has: limits at their edges and the named kinds of bad input."""
    n = f"{tag}-f"
    pad = LIMIT - len(obj(f"{n}edge", sender=""))
    cases = [
        # payload size at the limit and one byte over
        Case("payload at the limit", obj(f"{n}edge", sender="s" * pad), allowed=frozenset({"ok"})),
        Case(
            "payload one byte over",
            obj(f"{n}over", sender="s" * (pad + 1)),
            allowed=frozenset({"PAYLOAD_TOO_LARGE"}),
        ),
        Case(
            "payload of 5 MB",
            obj(f"{n}huge", sender="s" * 5_000_000),
            allowed=frozenset({"PAYLOAD_TOO_LARGE"}),
        ),
        Case(
            "mapping over the limit",
            {"name": f"{n}map", "sender": "m" * (LIMIT + 10)},
            allowed=frozenset({"PAYLOAD_TOO_LARGE"}),
        ),
        # ids at max_id_bytes and over it (bytes, not characters)
        Case(
            "entity id at max_id_bytes",
            obj("i" * MAX_ID),
            entity_id="i" * MAX_ID,
            allowed=frozenset({"ok"}),
        ),
        Case(
            "entity id one byte over",
            obj("j" * (MAX_ID + 1)),
            entity_id="j" * (MAX_ID + 1),
            fields=("entity_id", "name"),
        ),
        Case(
            "entity id over, only in the payload",
            obj("k" * (MAX_ID + 1)),
            fields=("entity_id", "name"),
        ),
        Case(
            "entity id over in UTF-8 bytes, not in characters",
            obj("é" * (MAX_ID // 2 + 1)),
            entity_id="é" * (MAX_ID // 2 + 1),
            fields=("entity_id", "name"),
        ),
        Case(
            "entity id of 1 MB",
            obj(f"{n}small"),
            entity_id="e" * 1_000_000,
            fields=("entity_id", "name"),
        ),
        Case(
            "message id at max_id_bytes",
            obj(f"{n}mid"),
            message_id=f"{tag}-".ljust(MAX_ID, "m"),
            allowed=frozenset({"ok"}),
        ),
        Case(
            "message id one byte over",
            obj(f"{n}mid2"),
            message_id="m" * (MAX_ID + 1),
            fields=("message_id",),
        ),
        Case(
            "message id over in UTF-8 bytes",
            obj(f"{n}mid3"),
            message_id="ü" * (MAX_ID // 2 + 1),
            fields=("message_id",),
        ),
        Case(
            "message id of 1 MB",
            obj(f"{n}mid4"),
            message_id="x" * 1_000_000,
            fields=("message_id",),
        ),
        # empty and non-object payloads
        Case("empty JSON", b""),
        Case("empty msgpack", b"", content_type=MSGPACK_CT),
        Case("empty mapping", {}, fields=("name",)),
        Case("JSON null", b"null"),
        Case("JSON string", b'"Incr"'),
        Case("JSON number", b"42"),
        Case("msgpack nil", b"\xc0", content_type=MSGPACK_CT),
        Case("JSON with trailing bytes", obj(f"{n}t") + b"}"),
        Case(
            "msgpack with trailing bytes", mp({"name": f"{n}t2"}) + b"\x00", content_type=MSGPACK_CT
        ),
        # numbers msgpack or JSON can carry but an int field cannot, or barely can
        Case("NaN literal", b'{"name":"' + n.encode() + b'n","by":NaN}'),
        Case("Infinity literal", b'{"name":"' + n.encode() + b'i","by":Infinity}'),
        Case("1e400", b'{"name":"' + n.encode() + b'e","by":1e400}'),
        Case("-1e400", b'{"name":"' + n.encode() + b'e2","by":-1e400}'),
        Case(
            "msgpack NaN for an int",
            mp_map([(mp("name"), mp(f"{n}mn")), (mp("by"), b"\xcb\x7f\xf8" + b"\x00" * 6)]),
            content_type=MSGPACK_CT,
        ),
        Case(
            "msgpack inf for a str",
            mp_map([(mp("name"), mp(f"{n}mi")), (mp("sender"), b"\xcb\x7f\xf0" + b"\x00" * 6)]),
            content_type=MSGPACK_CT,
        ),
        Case(
            "msgpack inf in an unknown field",
            mp_map([(mp("name"), mp(f"{n}mu")), (mp("zz"), b"\xcb\x7f\xf0" + b"\x00" * 6)]),
            content_type=MSGPACK_CT,
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        Case("mapping NaN for an int", {"name": f"{n}fn", "by": float("nan")}),
        Case(
            "mapping inf in an unknown field",
            {"name": f"{n}fu", "zz": float("inf")},
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        # accepted, the counter may outgrow what its reply can encode: HANDLER_ERROR
        Case(
            "msgpack uint64 max",
            mp({"name": f"{n}u64", "by": 2**64 - 1}),
            content_type=MSGPACK_CT,
            allowed=BIG_INT,
        ),
        Case(
            "msgpack int64 min",
            mp({"name": f"{n}i64", "by": -(2**63)}),
            content_type=MSGPACK_CT,
            allowed=BIG_INT,
        ),
        Case("mapping uint64 max", {"name": f"{n}mu64", "by": 2**64 - 1}, allowed=BIG_INT),
        Case(
            "10**5000 in an unknown field",
            b'{"name":"' + n.encode() + b'b","zz":1' + b"0" * 5000 + b"}",
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        # invalid UTF-8
        Case(
            "JSON invalid UTF-8 in a value", b'{"name":"' + n.encode() + b'u","sender":"\xff\xfe"}'
        ),
        Case("JSON invalid UTF-8 in the id", b'{"name":"\xc3\x28"}'),
        Case("JSON overlong UTF-8", b'{"name":"' + n.encode() + b'o","sender":"\xc0\xaf"}'),
        Case("JSON UTF-8 surrogate", b'{"name":"' + n.encode() + b'd","sender":"\xed\xa0\x80"}'),
        # an unknown key is skipped unread: refusing it or not are both fine
        Case(
            "JSON invalid UTF-8 in an unknown key",
            b'{"name":"' + n.encode() + b'k","\xff":1}',
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        Case(
            "msgpack invalid UTF-8 in a value",
            mp_map([(mp("name"), mp(f"{n}mv")), (mp("sender"), b"\xa2\xff\xfe")]),
            content_type=MSGPACK_CT,
        ),
        Case(
            "msgpack invalid UTF-8 in an unknown key",
            mp_map([(mp("name"), mp(f"{n}mk")), (b"\xa1\xff", mp(1))]),
            content_type=MSGPACK_CT,
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        # content types
        Case("JSON labelled msgpack", obj(f"{n}c1"), content_type=MSGPACK_CT),
        Case("msgpack labelled JSON", mp({"name": f"{n}c2"}), content_type=JSON_CT),
        Case("text/plain", obj(f"{n}c3"), content_type="text/plain"),
        Case("application/xml", obj(f"{n}c4"), content_type="application/xml"),
        Case("NUL content type", obj(f"{n}c5"), content_type="\x00"),
        Case("10 kB content type", obj(f"{n}c6"), content_type="a/" + "b" * 10_000),
        Case(
            "JSON with a charset",
            obj(f"{n}c7"),
            content_type="application/json; charset=utf-8",
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        Case(
            "upper-case JSON",
            obj(f"{n}c8"),
            content_type="Application/JSON",
            allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
        ),
        Case(
            "no content type (JSON by default)",
            obj(f"{n}c9"),
            content_type="",
            allowed=frozenset({"ok"}),
        ),
        # fields of the wrong type, the id disagreeing with the envelope
        Case("int for the id", b'{"name":7}', fields=("name",)),
        Case("list for an int", obj(f"{n}w", by=[1]), fields=("by",)),
        Case("id disagrees", obj(f"{n}x"), entity_id=f"{n}y", fields=("name", "entity_id")),
    ]
    unknown_types = ["", " ", "nope", "counter ", "COUNTER", "a:b", "\x00", "\U0001d54f" * 10]
    unknown_types += ["../counter", "counter\n", "t" * 100_000, "%s%n{0}"]
    for i, etype in enumerate(unknown_types):
        cases.append(
            Case(
                f"entity type {etype[:12]!r}",
                obj(f"{n}ut{i}"),
                entity_type=etype,
                allowed=frozenset({"UNKNOWN_ENTITY_TYPE", "INVALID_PAYLOAD"}),
            )
        )
    unknown_messages = ["", "incr", "Incr ", "__init__", "__class__", "Incr\x00", "Get/../Incr"]
    unknown_messages += ["msgspec.Struct", "m" * 100_000, "Counted"]
    for i, message in enumerate(unknown_messages):
        cases.append(
            Case(
                f"message {message[:12]!r}",
                obj(f"{n}um{i}"),
                message=message,
                allowed=frozenset({"UNKNOWN_MESSAGE", "INVALID_PAYLOAD"}),
            )
        )
    return [sized(c) for c in cases]


def random_cases(rng: random.Random, tag: str, count: int) -> list[Case]:
    """``count`` cases drawn from the generators below."""
    cases: list[Case] = []
    for i in range(count):
        n = f"{tag}-r{i}"
        kind = rng.choice(
            [
                "deep-json",
                "deep-msgpack",
                "big-int",
                "huge-string",
                "truncated",
                "bytes",
                "deep-map",
            ]
        )
        if kind == "deep-json":
            depth = rng.choice([1000, 5000, 20_000, 30_000, 100_000])
            nest = nest_json(depth, rng)
            where = rng.choice(["top", "by", "unknown"])
            if where == "top":
                case = Case(f"JSON {depth} deep", nest)
            elif where == "by":
                payload = b'{"name":"' + n.encode() + b'","by":' + nest + b"}"
                case = Case(f"JSON {depth} deep in a field", payload, fields=("by",))
            else:
                payload = b'{"name":"' + n.encode() + b'","zz":' + nest + b"}"
                allowed = frozenset({"ok", "INVALID_PAYLOAD"})
                case = Case(f"JSON {depth} deep in an unknown field", payload, allowed=allowed)
        elif kind == "deep-msgpack":
            depth = rng.choice([1000, 10_000, 60_000, 100_000])
            nest = nest_msgpack(depth, rng)
            where = rng.choice(["top", "by", "unknown"])
            if where == "top":
                case = Case(f"msgpack {depth} deep", nest, content_type=MSGPACK_CT)
            elif where == "by":
                payload = mp_map([(mp("name"), mp(n)), (mp("by"), nest)])
                case = Case(
                    f"msgpack {depth} deep in a field",
                    payload,
                    content_type=MSGPACK_CT,
                    fields=("by",),
                )
            else:
                payload = mp_map([(mp("name"), mp(n)), (mp("zz"), nest)])
                allowed = frozenset({"ok", "INVALID_PAYLOAD"})
                case = Case(
                    f"msgpack {depth} deep in an unknown field",
                    payload,
                    content_type=MSGPACK_CT,
                    allowed=allowed,
                )
        elif kind == "big-int":
            value = rng.choice(
                [2**64, 2**64 + rng.randrange(2**40), -(2**63) - 1, 10**30, -(10**30), 2**200]
            )
            where = rng.choice(["by", "unknown"])
            key = "by" if where == "by" else "zz"
            payload = b'{"name":"' + n.encode() + f'","{key}":{value}}}'.encode()
            case = Case(f"JSON int {str(value)[:8]}.. in {where}", payload, allowed=BIG_INT)
        elif kind == "huge-string":
            size = rng.choice([1000, 30_000, LIMIT - 100, LIMIT + 100, 300_000])
            if rng.random() < 0.5:
                case = Case(
                    f"{size} B string", obj(n, sender="s" * size), allowed=frozenset({"ok"})
                )
            else:
                case = Case(
                    f"{size} B string in a mapping",
                    {"name": n, "sender": "ß" * (size // 2)},
                    allowed=frozenset({"ok"}),
                )
        elif kind == "truncated":
            whole = mp({"name": n, "by": rng.randrange(100), "sender": "t" * rng.randrange(50)})
            cut = rng.randrange(len(whole))
            case = Case(f"msgpack cut at {cut}/{len(whole)}", whole[:cut], content_type=MSGPACK_CT)
        elif kind == "bytes":
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            ctype = rng.choice([JSON_CT, MSGPACK_CT])
            # random bytes are almost never a valid Incr; if they happen to be, fine
            case = Case(
                f"{len(junk)} random bytes as {ctype}",
                junk,
                content_type=ctype,
                allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
            )
        else:  # a nested mapping, within what the client can encode
            depth = rng.choice([10, 100, 500])
            inner: Any = 1
            for _ in range(depth):
                inner = {"a": inner} if rng.random() < 0.5 else [inner]
            where = rng.choice(["by", "unknown"])
            if where == "by":
                case = Case(
                    f"mapping {depth} deep in a field", {"name": n, "by": inner}, fields=("by",)
                )
            else:
                case = Case(
                    f"mapping {depth} deep in an unknown field",
                    {"name": n, "zz": inner},
                    allowed=frozenset({"ok", "INVALID_PAYLOAD"}),
                )
        cases.append(sized(case))
    return cases


def valid(tag: str, i: int) -> Case:
    return Case("valid", obj(f"{tag}-v{i}", sender=tag, seq=i), allowed=frozenset({"ok"}))


# ---- checking results ------------------------------------------------------------------


@dataclass
class Tally:
    """What came back: accepted message ids, and everything that broke the contract."""

    accepted: set[str] = field(default_factory=set)
    valid_ids: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    checked: int = 0

    hung: collections.Counter[str] = field(default_factory=collections.Counter)

    def check(
        self, where: str, case: Case, mid: str, got: str, error: dict[str, Any] | None
    ) -> None:
        """``got``: "ok", a code, or a description of something that is neither."""
        self.checked += 1
        if got in ("ok", "HANDLER_ERROR"):  # written, then run (and maybe failed)
            self.accepted.add(mid)
        if got not in case.allowed:
            detail = ""
            if error:
                detail = f": {str(error.get('message', ''))[:160]}"
            self.violations.append(
                f"[{where}] {case.label}: got {got}{detail} (allowed {sorted(case.allowed)})"
            )
            return
        if got == "INVALID_PAYLOAD" and case.fields and error is not None:
            text = f"{error.get('field', '')} {error.get('message', '')}"
            if not any(f in text for f in case.fields):
                self.violations.append(
                    f"[{where}] {case.label}: INVALID_PAYLOAD names none of {case.fields}: "
                    f"{text[:160]}"
                )

    def hang(self, where: str, cases: list[Case]) -> bool:
        """A batch hung; True once the budget is spent (stop sending)."""
        self.hung[where] += 1
        labels = sorted({c.label for c in cases if c.label != "valid"})
        self.violations.insert(
            0, f"[{where}] a batch got no answer in {CALL_DEADLINE_S}s; it held: {labels}"
        )
        if self.hung[where] >= HANG_BUDGET:
            self.violations.insert(0, f"[{where}] stopped sending after {HANG_BUDGET} hung")
            return True
        return False

    def assert_clean(self) -> None:
        counted = collections.Counter(self.violations)
        lines = [f"{v}  (x{n})" if n > 1 else v for v, n in counted.items()]
        assert not self.violations, (
            f"{len(self.violations)} of {self.checked} sends broke the contract:\n  "
            + "\n  ".join(lines[:80])
        )


async def bounded(call: Awaitable[Any]) -> tuple[str, Any]:
    """Run one client call under the deadline: ("ok", value), (code, AqError) or trouble."""
    try:
        value = await asyncio.wait_for(call, CALL_DEADLINE_S)
    except TimeoutError:
        return f"no answer in {CALL_DEADLINE_S}s (hangs)", None
    except AqError as exc:
        return (exc.code if exc.code in ANY_CODE else f"non-SPEC code {exc.code}"), exc
    except Exception as exc:
        return f"{type(exc).__module__}.{type(exc).__qualname__} ({str(exc)[:120]})", None
    return "ok", value


def error_dict(value: Any) -> dict[str, Any] | None:
    return value.to_dict() if isinstance(value, AqError) else None


# ---- the node --------------------------------------------------------------------------


@dataclass
class Fuzz:
    node: Node
    redis: redis.Redis
    supervisor: int
    shards: dict[int, int]

    def assert_survived(self) -> None:
        assert self.node.proc.poll() is None, f"the supervisor exited:\n{self.node.log()[-3000:]}"
        status = self.node.status()
        assert status.pid == self.supervisor
        now = {s.index: s.pid for s in status.shards if s.alive}
        assert now == self.shards, f"shards restarted: {self.shards} -> {now}"
        assert all(s.restarts == 0 for s in status.shards), "a shard was restarted"

    def logged_ids(self) -> set[str]:
        entry = f"{PREFIX}m:"
        return {
            k.decode("utf-8", "replace")[len(entry) :]
            for k in self.redis.scan_iter(match=f"{entry}*", count=1000)
        }

    def assert_nothing_refused_was_written(self, tally: Tally) -> None:
        stray = self.logged_ids() - tally.accepted
        assert not stray, f"refused messages left log entries: {sorted(s[:40] for s in stray)}"
        for index in ("live", "dlq", "done"):
            members = {
                m.decode("utf-8", "replace") for m in self.redis.zrange(f"{PREFIX}{index}", 0, -1)
            }
            extra = members - tally.accepted
            assert not extra, f"refused messages in {index}: {sorted(x[:40] for x in extra)}"

    def assert_valid_ran(self, tally: Tally) -> None:
        def ran() -> bool:
            done = {x.decode() for x in self.redis.lrange("t:ran", 0, -1)}
            return tally.valid_ids <= done

        wait_for(ran, timeout=20, message="valid messages sent beside hostile ones never ran")
        wait_for(
            lambda: self.redis.zcard(f"{PREFIX}live") == 0,
            timeout=20,
            message="accepted messages are still unfinished in the log",
        )


@pytest.fixture
def fuzz(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[Fuzz]:
    with running_node(tmp_path, redis_url, max_payload_bytes=LIMIT, max_id_bytes=MAX_ID) as node:
        status = node.status()
        yield Fuzz(node, redis_client, status.pid, {s.index: s.pid for s in status.shards})


# ---- the tests -------------------------------------------------------------------------


def test_hostile_payloads_through_the_python_client(fuzz: Fuzz) -> None:
    rng = random.Random(SEED)
    cases = fixed_cases("pc") + random_cases(rng, "pc", RANDOM_CASES)
    rng.shuffle(cases)
    tally = Tally()

    async def send(bus: Client, case: Case, mid: str, wait: bool) -> tuple[str, Any]:
        args = (case.entity_type, case.message, case.entity_id, case.payload)
        ctype = None if isinstance(case.payload, dict) else case.content_type
        if wait:
            timeout = WAIT_MS / 1000
            return await bounded(
                bus.enqueue_and_wait_raw(*args, message_id=mid, content_type=ctype, timeout=timeout)
            )
        return await bounded(bus.enqueue_raw(*args, message_id=mid, content_type=ctype))

    async def main() -> None:
        for start in range(0, len(cases), 12):
            # A client (one Session stream) per batch: a stream that one input broke
            # cannot hide what the node does with the next batch.
            async with Client(fuzz.node.address) as bus:
                batch: list[tuple[Case, str, Awaitable[tuple[str, Any]]]] = []
                for i, case in enumerate(cases[start : start + 12], start):
                    mid = case.message_id or f"pc-{i}"
                    batch.append((case, mid, send(bus, case, mid, rng.random() < 0.3)))
                    # a valid message beside every hostile one, in the same frame
                    ok = valid("pc", i)
                    batch.append((ok, f"pc-v{i}", send(bus, ok, f"pc-v{i}", rng.random() < 0.3)))
                    tally.valid_ids.add(f"pc-v{i}")
                results = await asyncio.gather(*(c for _, _, c in batch))
            for (case, mid, _), (got, value) in zip(batch, results, strict=True):
                tally.check("client", case, mid, got, error_dict(value))
            hung = any(got.startswith("no answer") for got, _ in results)
            if hung and tally.hang("client", [c for c, _, _ in batch]):
                break

    asyncio.run(main())
    tally.assert_clean()
    fuzz.assert_survived()
    fuzz.assert_valid_ran(tally)
    fuzz.assert_nothing_refused_was_written(tally)


def test_hostile_payloads_through_raw_grpc(fuzz: Fuzz) -> None:
    """The same kinds of input from a client in another language: the Session stream
    (mixed with valid calls in one frame), and unary Enqueue, EnqueueAndWait, EnqueueMany."""
    rng = random.Random(SEED + 1)
    fixed, drawn = fixed_cases("rg"), random_cases(rng, "rg", RANDOM_CASES)
    tally = Tally()

    def envelope(case: Case, mid: str) -> pb.Envelope:
        payload, ctype = case.wire()
        return pb.Envelope(
            entity_type=case.entity_type,
            message=case.message,
            entity_id=case.entity_id,
            payload=payload,
            content_type=ctype,
            message_id=mid,
        )

    def outcome_result(outcome: pb.Outcome) -> tuple[str, dict[str, Any] | None]:
        if outcome.ok:
            return "ok", None
        f = outcome.failure
        code = f.code if f.code in ANY_CODE else f"non-SPEC code {f.code!r}"
        return code, {"code": f.code, "message": f.message, "field": f.field}

    def rpc_result(exc: grpc.RpcError) -> tuple[str, dict[str, Any] | None]:
        metadata = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        raw = metadata.get("aq-error-bin")
        if raw is None:
            return f"gRPC {exc.code()} with no aq-code: {str(exc.details())[:120]}", None  # type: ignore[attr-defined]
        error: dict[str, Any] = json.loads(raw)
        code = str(error.get("code"))
        return (code if code in ANY_CODE else f"non-SPEC code {code}"), error

    # every fixed case through every way in; the drawn ones spread over them
    groups: list[list[tuple[Case, str]]] = [[], [], [], []]
    for g, group in enumerate(groups):
        group += [(c, c.message_id or f"rg-{g}-f{i}") for i, c in enumerate(fixed)]
        group += [(c, f"rg-{g}-r{i}") for i, c in enumerate(drawn) if i % 4 == g]
        rng.shuffle(group)
    session_cases, enqueue_cases, wait_cases, many_cases = groups

    with grpc.insecure_channel(fuzz.node.address, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.AqNodeStub(channel)
        # Session: hostile calls with valid ones between them; one frame, one stream each
        call_id = 0
        for start in range(0, len(session_cases), 10):
            calls = []
            expected: dict[int, tuple[Case, str]] = {}
            for case, mid in session_cases[start : start + 10]:
                for c, m in ((case, mid), (valid("rg", call_id), f"rg-sv{call_id}")):
                    call_id += 1
                    expected[call_id] = (c, m)
                    if c.label == "valid":
                        tally.valid_ids.add(m)
                    calls.append(
                        pb.Call(
                            call_id=call_id,
                            envelope=envelope(c, m),
                            wait=rng.random() < 0.3,
                            timeout_ms=WAIT_MS,
                        )
                    )
            seen: dict[int, list[pb.Outcome]] = {}
            failed = ""
            try:
                frames = iter([pb.ClientFrame(calls=calls)])
                for frame in stub.Session(frames, timeout=CALL_DEADLINE_S):
                    for outcome in frame.outcomes:
                        seen.setdefault(outcome.call_id, []).append(outcome)
            except grpc.RpcError as exc:
                details = str(exc.details())[:160]  # type: ignore[attr-defined]
                failed = f"the stream failed: {exc.code()} {details}"  # type: ignore[attr-defined]
            for cid, (case, mid) in expected.items():
                got_all = seen.get(cid, [])
                if len(got_all) == 1:
                    got, error = outcome_result(got_all[0])
                    tally.check("session", case, mid, got, error)
                else:
                    got = failed if not got_all and failed else f"{len(got_all)} outcomes"
                    tally.check("session", case, mid, got, None)
            hung = "DEADLINE_EXCEEDED" in failed
            if hung and tally.hang("session", [c for c, _ in expected.values()]):
                break

        def unary(c: Case, m: str, wait: bool) -> tuple[str, dict[str, Any] | None]:
            try:
                if wait:
                    request = pb.EnqueueAndWaitRequest(envelope=envelope(c, m), timeout_ms=WAIT_MS)
                    stub.EnqueueAndWait(request, timeout=CALL_DEADLINE_S)
                else:
                    stub.Enqueue(
                        pb.EnqueueRequest(envelope=envelope(c, m)), timeout=CALL_DEADLINE_S
                    )
            except grpc.RpcError as exc:
                return rpc_result(exc)
            return "ok", None

        # unary Enqueue and EnqueueAndWait, a valid call after each hostile one
        for cases_, wait in ((enqueue_cases, False), (wait_cases, True)):
            where = "unary wait" if wait else "unary"
            for i, (case, mid) in enumerate(cases_):
                extra = valid("rg", 10_000 * (1 + wait) + i)
                pair = ((case, mid), (extra, f"rg-uv{int(wait)}-{i}"))
                hung = False
                for c, m in pair:
                    got, error = unary(c, m, wait)
                    if c.label == "valid":
                        tally.valid_ids.add(m)
                    tally.check(where, c, m, got, error)
                    hung = hung or got.startswith("gRPC StatusCode.DEADLINE_EXCEEDED")
                if hung and tally.hang(where, [c for c, _ in pair]):
                    break

        # EnqueueMany: hostile and valid envelopes in one request
        for start in range(0, len(many_cases), 10):
            pairs: list[tuple[Case, str]] = []
            for j, (case, mid) in enumerate(many_cases[start : start + 10], start):
                pairs += [(case, mid), (valid("rg", 30_000 + j), f"rg-mv{j}")]
                tally.valid_ids.add(f"rg-mv{j}")
            try:
                reply = stub.EnqueueMany(
                    pb.EnqueueManyRequest(envelopes=[envelope(c, m) for c, m in pairs]),
                    timeout=CALL_DEADLINE_S,
                )
            except grpc.RpcError as exc:
                got = rpc_result(exc)[0]
                tally.violations.append(f"[many] the request failed: {got}")
                hung = got.startswith("gRPC StatusCode.DEADLINE_EXCEEDED")
                if hung and tally.hang("many", [c for c, _ in pairs]):
                    break
                continue
            if len(reply.outcomes) != len(pairs):
                tally.violations.append(
                    f"[many] {len(reply.outcomes)} outcomes for {len(pairs)} envelopes"
                )
                continue
            for (case, mid), outcome in zip(pairs, reply.outcomes, strict=True):
                got, error = outcome_result(outcome)
                tally.check("many", case, mid, got, error)

    tally.assert_clean()
    fuzz.assert_survived()
    fuzz.assert_valid_ran(tally)
    fuzz.assert_nothing_refused_was_written(tally)


CLIENT_SIDE = [
    # (label, entity_id, data, message_id): input the Python client cannot put on the wire
    ("int >= 2**64 in a mapping", "cs1", {"name": "cs1", "by": 2**64}, None),
    ("very negative int in a mapping", "cs2", {"name": "cs2", "by": -(2**80)}, None),
    ("lone surrogate in a mapping", "cs3", {"name": "cs3", "sender": "\udcff"}, None),
    ("lone surrogate in the entity id", "\udcff", {"name": "cs4"}, None),
    ("lone surrogate in the message id", "cs5", {"name": "cs5"}, "\ud800"),
    ("mapping 100000 deep", "cs6", {"name": "cs6", "zz": "DEEP"}, None),
]


def test_the_python_client_refuses_what_it_cannot_encode_with_a_code(fuzz: Fuzz) -> None:
    """Input the client cannot encode is refused as INVALID_PAYLOAD, not a bare
    OverflowError/UnicodeEncodeError/RecursionError, and the client stays usable."""
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    problems: list[str] = []
    accepted: set[str] = set()

    async def main() -> None:
        async with Client(fuzz.node.address) as bus:
            for i, (label, entity_id, data, mid) in enumerate(CLIENT_SIDE):
                if data.get("zz") == "DEEP":
                    data = {**data, "zz": deep}
                got, _ = await bounded(
                    bus.enqueue_raw("counter", "Incr", entity_id, data, message_id=mid)
                )
                if got != "INVALID_PAYLOAD":
                    problems.append(f"{label}: got {got}")
                after, _ = await bounded(
                    bus.enqueue_and_wait_raw(
                        "counter", "Incr", "cs-ok", {"name": "cs-ok"}, message_id=f"cs-ok-{i}"
                    )
                )
                accepted.add(f"cs-ok-{i}")
                if after != "ok":
                    problems.append(f"{label}: the next valid call got {after}")
                if "(hangs)" in f"{got} {after}":
                    problems.append("stopped at the first hang")
                    return

    asyncio.run(main())
    assert not problems, "\n".join(problems)
    fuzz.assert_survived()
    assert fuzz.logged_ids() <= accepted, "refused messages left log entries"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _frame_with_bad_utf8() -> bytes:
    """A ClientFrame whose envelope's entity_id (a proto3 string) is not UTF-8."""
    env = _len_field(1, b"counter") + _len_field(2, b"Incr") + _len_field(3, b"\xff\xfe")
    env += _len_field(4, b'{"name":"x"}')
    call = _varint(1 << 3) + _varint(1) + _len_field(2, env)
    return _len_field(1, call)


def _truncated_frame() -> bytes:
    env = pb.Envelope(entity_type="counter", message="Incr", payload=b'{"name":"tr"}')
    whole = pb.ClientFrame(calls=[pb.Call(call_id=1, envelope=env)]).SerializeToString()
    return whole[:-5]


BAD_FRAMES = {
    "garbage": b"\xff\xff\xff\xff\xff\x00garbage",
    "invalid UTF-8 in a string field": _frame_with_bad_utf8(),
    "truncated": _truncated_frame(),
}


@pytest.mark.parametrize("raw", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_a_session_frame_that_is_not_a_client_frame_ends_the_stream_clearly(
    fuzz: Fuzz, raw: bytes
) -> None:
    with pytest.raises(DecodeError):  # the bytes really are no ClientFrame
        pb.ClientFrame.FromString(raw)
    with grpc.insecure_channel(fuzz.node.address) as channel:
        session: Callable[..., Iterator[pb.ServerFrame]] = channel.stream_stream(
            "/aqnode.v1.AqNode/Session",
            request_serializer=None,  # the bytes go out as they are
            response_deserializer=pb.ServerFrame.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            for _ in session(iter([raw]), timeout=CALL_DEADLINE_S):
                pass
        error = caught.value
        code, details = error.code(), str(error.details())  # type: ignore[attr-defined]
        assert code not in (
            grpc.StatusCode.OK,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAVAILABLE,
        ), f"{code}: {details}"
        assert "ClientFrame" in details, (
            f"the status should say the frame is not a valid ClientFrame; got {code}: {details!r}"
        )
        # The same bytes on a unary call are refused too, and the node keeps serving
        enqueue = channel.unary_unary(
            "/aqnode.v1.AqNode/Enqueue",
            request_serializer=None,
            response_deserializer=pb.EnqueueReply.FromString,
        )
        with pytest.raises(grpc.RpcError) as unary:
            enqueue(raw, timeout=CALL_DEADLINE_S)
        assert unary.value.code() not in (  # type: ignore[attr-defined]
            grpc.StatusCode.OK,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    with fuzz.node.client() as bus:
        reply = bus.enqueue_and_wait_raw(
            "counter", "Incr", "after", {"name": "after"}, message_id="after-1"
        )
        assert reply == {"name": "after", "value": 1}
    fuzz.assert_survived()
    assert fuzz.logged_ids() <= {"after-1"}, "a refused frame left log entries"
