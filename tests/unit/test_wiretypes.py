"""aqnode.wiretypes: a rebuilt type accepts exactly what the real class accepts.

For each class C of a zoo covering what msgspec decodes, with R = rebuild(describe(C))
sent through msgpack, and for seeded random payloads (valid ones, then mutated: fields
dropped or added, wrong types, out-of-range and huge numbers, deep nesting), as JSON and
as msgpack:

1. R decodes P iff C does;
2. then the msgpack of R's value decodes in C to what C decodes from P;
3. else both errors name the same path.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, NamedTuple, NotRequired, TypedDict, TypeVar

import msgspec
import msgspec.inspect as mi
import pytest
from msgspec import Meta

from aqnode.api import Command
from aqnode.wiretypes import TypeDesc, describe, rebuild, to_msgpack

# --- the zoo -------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Scalars(msgspec.Struct):
    small: Annotated[int, Meta(ge=0, lt=100)]
    even: Annotated[int, Meta(multiple_of=2, gt=-10, le=10)]
    ratio: Annotated[float, Meta(ge=0.0, le=1.0)]
    name: Annotated[str, Meta(min_length=1, max_length=5, pattern="^[a-z]+$")]
    flag: bool
    nothing: None
    blob: Annotated[bytes, Meta(max_length=4)]
    buf: bytearray
    when: Annotated[datetime.datetime, Meta(tz=True)]
    naive: Annotated[datetime.datetime, Meta(tz=False)]
    day: datetime.date
    clock: datetime.time
    span: datetime.timedelta
    ident: uuid.UUID
    money: decimal.Decimal
    anything: Any
    color: Color
    level: Level
    lit: Literal["a", "b", 3, None]
    clock_tz: Annotated[datetime.time, Meta(tz=True)]
    maybe: int | None = None
    either: int | str | None = 0
    rate: float = 0.5
    answer: Literal[True, "maybe"] = "maybe"
    view: memoryview | None = None


class Collections(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[int], Meta(min_length=1, max_length=3)]
    uniq: set[str]
    frozen: frozenset[Level]
    pair: tuple[int, str]
    empty: tuple[()]
    many: tuple[float, ...]
    by_name: Annotated[dict[str, int], Meta(max_length=2)]
    by_num: dict[int, list[str | None]]
    by_level: dict[Level, Color] = {}
    by_color: dict[Color, int] = {}
    nested: list[dict[str, tuple[int, ...]]] = []
    bare_list: list[Any] = []


class Tree(msgspec.Struct):
    value: int
    children: list[Tree] = []
    next: Tree | None = None


class Circle(msgspec.Struct, tag_field="kind", tag="circle"):
    r: float


class Square(msgspec.Struct, tag_field="kind", tag="square"):
    side: Annotated[int, Meta(gt=0)]


class Tri(msgspec.Struct, tag_field="kind", tag="tri"):
    a: int
    b: int = 1


class Add(msgspec.Struct, tag=True, array_like=True):
    x: int
    y: int = 0


class Neg(msgspec.Struct, tag=True, array_like=True):
    x: int


class V1(msgspec.Struct, tag_field="v", tag=1):
    a: int


class V2(msgspec.Struct, tag_field="v", tag=2, forbid_unknown_fields=True):
    a: str
    b: list[int] = []


class Drawing(msgspec.Struct, rename="camel"):
    main_shape: Circle | Square | Tri
    all_shapes: list[Circle | Square | Tri]
    ops: list[Add | Neg] = []
    versioned: V1 | V2 | None = None
    title_text: str = msgspec.field(name="@title", default="")


class Point(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    x: int
    y: int = 0
    tags: list[str] = []
    level: Level = Level.LOW


class Tagged(msgspec.Struct, tag=True):
    n: int


T = TypeVar("T")


class Box(msgspec.Struct, Generic[T]):
    item: T
    more: list[T] = []


@dataclasses.dataclass
class DC:
    a: int
    b: str = "x"
    c: list[int] = dataclasses.field(default_factory=list)


class TD(TypedDict):
    a: int
    b: NotRequired[str]


class NT(NamedTuple):
    a: int
    b: str = "b"


class Pair(NamedTuple):
    left: int
    right: list[Pair]  # all required, and recursive: a tuple whose items are structs


class Others(msgspec.Struct):
    point: Point
    tagged: Tagged
    box: Box[int]
    dc: DC
    td: TD
    nt: NT
    pair: Pair
    boxes: list[Box[str]] = []


class Balance(msgspec.Struct):
    balance: int


class Deposit(Command[Balance], kw_only=True):
    """A handler message as users write them: a Command with a reply type."""

    account_id: str
    amount: Annotated[int, Meta(gt=0)]
    note: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)


class Loose(msgspec.Struct, array_like=True):
    """Positional defaults: one the supervisor can send (0), one it can't (Any decodes a
    frozenset back as a list), then one it could but must not (it follows the UNSET)."""

    n: int
    seen: Any = frozenset()
    tail: int = 0


class Stamped(msgspec.Struct, array_like=True):
    """A positional default only the shard can make."""

    n: int
    at: datetime.datetime = msgspec.field(default_factory=datetime.datetime.now)


ZOO: list[type[Any]] = [Scalars, Collections, Tree, Drawing, Others, Deposit, Point, Loose]
NEEDS_TO_MSGPACK = {Loose}  # msgspec.msgpack.encode refuses its UNSET
HAS_NAMEDTUPLES = {Others}


def _rebuilt(cls: type[Any]) -> Any:
    wire = msgspec.msgpack.encode(describe(cls))
    return rebuild(msgspec.msgpack.decode(wire, type=TypeDesc))


# --- payload generation --------------------------------------------------------------------

WRONG: list[Any] = [None, True, -1, 0, 7, 1.5, -1e300, 2**64, -(2**63) - 1, 10**30]
WRONG += ["", "zz", "2024-01-01", [], [1, "a"], {}, {"a": 1}]


def _wrong(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(WRONG))  # fresh: mutations must not build cycles


def _bounds(t: mi.IntType | mi.FloatType) -> tuple[float, float]:
    lo = t.ge if t.ge is not None else (t.gt if t.gt is not None else -50)
    hi = t.le if t.le is not None else (t.lt if t.lt is not None else 50)
    return lo, hi


def gen(t: mi.Type, rng: random.Random, depth: int = 0) -> Any:
    """A mostly valid value of type ``t``, as builtins and stdlib objects msgspec encodes."""
    if isinstance(t, mi.Metadata):
        return gen(t.type, rng, depth)
    if isinstance(t, mi.AnyType):
        return rng.choice([None, 1, "s", 2.5, [1, "a"], {"k": [True]}])
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    ok = rng.random() < 0.97  # per field: a struct of 20 fields is still often all valid
    if isinstance(t, mi.IntType):
        lo, hi = _bounds(t)
        v = rng.randint(int(lo), int(hi)) if ok else rng.choice([int(lo) - 1, int(hi) + 1])
        if t.multiple_of and ok:
            v -= v % t.multiple_of
            v += t.multiple_of if t.gt is not None and v <= t.gt else 0
        return v
    if isinstance(t, mi.FloatType):
        lo, hi = _bounds(t)
        return rng.choice([lo, hi, rng.uniform(lo, hi), 1]) if ok else hi + 0.5
    if isinstance(t, mi.StrType):
        lo, hi = t.min_length or 0, t.max_length or 4
        n = rng.randint(lo, hi) if ok else hi + 1
        return "".join(rng.choice("abcxyz" if ok else "abQ1") for _ in range(n))
    if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
        n = rng.randint(0, t.max_length or 5) if ok else (t.max_length or 5) + 1
        return bytes(rng.randrange(256) for _ in range(n))
    if isinstance(t, mi.DateTimeType | mi.TimeType):
        aware: list[datetime.tzinfo | None] = [datetime.UTC, datetime.timezone.max]
        zones: dict[bool | None, list[datetime.tzinfo | None]]
        zones = {True: aware, False: [None], None: [None, *aware]}
        tz = rng.choice(zones[t.tz if ok else None])
        if isinstance(t, mi.TimeType):
            return datetime.time(rng.randint(0, 23), 5, 6, tzinfo=tz)
        return datetime.datetime(2024, 5, rng.randint(1, 28), 12, 30, tzinfo=tz)
    if isinstance(t, mi.DateType):
        return datetime.date(2024, 2, rng.randint(1, 29))
    if isinstance(t, mi.TimeDeltaType):
        return datetime.timedelta(seconds=rng.randint(-100, 100))
    if isinstance(t, mi.UUIDType):
        return uuid.UUID(int=rng.getrandbits(128))
    if isinstance(t, mi.DecimalType):
        return decimal.Decimal(rng.randint(-999, 999)) / 100
    if isinstance(t, mi.EnumType):
        return rng.choice([m.value for m in t.cls])
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.CollectionType | mi.DictType):
        n = rng.randint(t.min_length or 0, min(t.max_length or 3, 3) if depth < 4 else 0)
        if isinstance(t, mi.DictType):
            return {
                gen(t.key_type, rng, depth + 1): gen(t.value_type, rng, depth + 1) for _ in range(n)
            }
        return [gen(t.item_type, rng, depth + 1) for _ in range(n)]
    if isinstance(t, mi.TupleType):
        return [gen(i, rng, depth + 1) for i in t.item_types]
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if depth < 6 or isinstance(m, mi.NoneType)]
        return gen(rng.choice(members or t.types), rng, depth + 1)
    if isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        fields = [f for f in t.fields if f.required or (depth < 6 and rng.random() < 0.6)]
        values = {f.encode_name: gen(f.type, rng, depth + 1) for f in fields}
        tag_field, tag = (t.tag_field, t.tag) if isinstance(t, mi.StructType) else (None, None)
        if isinstance(t, mi.NamedTupleType) or (isinstance(t, mi.StructType) and t.array_like):
            out = []
            for f in t.fields:  # positional: only a trailing run may be left out
                if f.encode_name not in values:
                    break
                out.append(values[f.encode_name])
            return ([tag] if tag_field else []) + out
        return ({tag_field: tag} if tag_field else {}) | values
    raise AssertionError(f"no generator for {t}")


def _containers(v: Any) -> list[list[Any] | dict[Any, Any]]:
    found: list[list[Any] | dict[Any, Any]] = []
    if isinstance(v, list | dict):
        found.append(v)
        for child in v.values() if isinstance(v, dict) else v:
            found += _containers(child)
    return found


def mutate(v: Any, rng: random.Random) -> Any:
    """Break ``v`` in place at a random spot (or replace it outright)."""
    spots = _containers(v)
    if not spots or rng.random() < 0.05:
        return _wrong(rng)
    c = rng.choice(spots)
    op = rng.randrange(4)
    if isinstance(c, dict):
        keys = list(c)
        if op == 0 and keys:
            del c[rng.choice(keys)]
        elif op == 1 and keys:
            c[rng.choice(keys)] = _wrong(rng)
        elif op == 2:
            c[rng.choice(["zz_extra", "kind", "type", *keys])] = _wrong(rng)
        elif keys:
            c[rng.choice(keys)] = 2**70
    elif op == 0 and c:
        c.pop()
    elif op == 1 and c:
        c[rng.randrange(len(c))] = _wrong(rng)
    elif op == 2:
        c.append(_wrong(rng))
    elif c:
        c[0] = 2**70
    return v


# --- the property --------------------------------------------------------------------------

_AT = re.compile(r" - at (.+)$")


def _path(message: str) -> str | None:
    m = _AT.search(message)
    return m[1] if m else None


def _decode(decode: Callable[..., Any], data: bytes, typ: Any) -> tuple[bool, Any]:
    try:
        return True, decode(data, type=typ)
    except msgspec.ValidationError as e:
        return False, str(e)


def check(cls: type[Any], rebuilt: Any, data: bytes, decode: Callable[..., Any]) -> bool:
    """The property for one payload; True when both decoded it."""
    c_ok, c = _decode(decode, data, cls)
    r_ok, r = _decode(decode, data, rebuilt)
    assert c_ok == r_ok, (cls, data, c, r)
    if not c_ok:
        c_path, r_path = _path(c), _path(r)
        if r_path != c_path and cls in HAS_NAMEDTUPLES:
            # Only for a NamedTuple rebuilt as an array_like struct (it has defaults, or it
            # is recursive, so it can't be a plain tuple): msgspec
            # checks a NamedTuple's length first but a struct's items first, and the JSON
            # "too long" error of such a struct has no path (msgspec 0.23).
            assert re.match(r"Expected `array` of length \d+( to \d+)?", c), (cls, data, c, r)
            assert r_path is None or r_path.startswith((c_path or "`$").rstrip("`")), (c, r)
        else:
            assert r_path == c_path, (cls, data, c, r)
        return False
    try:
        again = msgspec.msgpack.encode(r) if cls not in NEEDS_TO_MSGPACK else to_msgpack(r)
    except OverflowError:  # a JSON int beyond msgpack's range: the real value can't go either
        with pytest.raises(OverflowError):
            msgspec.msgpack.encode(c)
        return True
    assert msgspec.msgpack.decode(again, type=cls) == c, (cls, data, c, r)
    return True


@pytest.mark.parametrize("cls", ZOO, ids=lambda c: c.__name__)
def test_rebuilt_type_accepts_exactly_what_the_class_accepts(cls: type[Any]) -> None:
    rebuilt = _rebuilt(cls)
    info = mi.type_info(cls)
    rng = random.Random(f"wiretypes-{cls.__name__}")
    outcomes = {True: 0, False: 0}
    for i in range(1500):
        value = gen(info, rng)
        for _ in range(i % 3):  # a third valid-ish, the rest broken once or twice
            value = mutate(value, rng)
        data = msgspec.json.encode(value)
        outcomes[check(cls, rebuilt, data, msgspec.json.decode)] += 1
        try:
            data = msgspec.msgpack.encode(value)
        except OverflowError:  # 2**70 has no msgpack form; JSON covered it
            continue
        outcomes[check(cls, rebuilt, data, msgspec.msgpack.decode)] += 1
    # Both sides of the "iff" were exercised, not just rejections.
    assert outcomes[True] > 100 and outcomes[False] > 100, outcomes


def test_describe_is_plain_data_that_round_trips() -> None:
    for cls in ZOO:
        desc = describe(cls)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(desc), type=TypeDesc) == desc
        assert msgspec.json.decode(msgspec.json.encode(desc), type=TypeDesc) == desc
        # to_builtins raises on a class or function: none may hide in the description.
        assert cls.__name__ in str(msgspec.to_builtins(desc))


def test_rebuilt_classes_keep_names_field_names_and_shape() -> None:
    rebuilt = _rebuilt(Drawing)
    assert rebuilt.__name__ == "Drawing"
    assert rebuilt.__module__ == "aqnode.wiretypes"
    assert rebuilt.__struct_fields__ == Drawing.__struct_fields__
    assert rebuilt.__struct_encode_fields__ == Drawing.__struct_encode_fields__
    assert _rebuilt(Box[int]).__name__ == "Box"


class Stamp(msgspec.Struct):
    n: int
    at: datetime.datetime = msgspec.field(default_factory=datetime.datetime.now)


def test_omitted_defaults_stay_omitted_so_the_shard_applies_its_own() -> None:
    rebuilt = _rebuilt(Deposit)
    r = msgspec.json.decode(b'{"account_id": "a", "amount": 5}', type=rebuilt)
    assert r.account_id == "a" and r.note is msgspec.UNSET
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(r)) == {"account_id": "a", "amount": 5}
    r = msgspec.json.decode(b'{"n": 1}', type=_rebuilt(Stamp))
    before = datetime.datetime.now()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(r), type=Stamp).at >= before


def test_positional_defaults_are_sent_when_safe_else_to_msgpack_drops_them() -> None:
    r = msgspec.json.decode(b"[1]", type=_rebuilt(Point))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(r)) == [1, 0, [], 1]
    r = msgspec.json.decode(b"[1]", type=_rebuilt(Loose))
    assert (r.seen, r.tail) == (msgspec.UNSET, 0)
    assert msgspec.msgpack.decode(to_msgpack(r)) == [1]  # cut at the first UNSET
    stamped = _rebuilt(Stamped)
    r = msgspec.json.decode(b"[1]", type=stamped)
    try:  # msgspec's own limit up to 0.22 (newer versions may encode it)
        msgspec.msgpack.encode(r)
    except TypeError as exc:
        assert "UnsetType" in str(exc)
    assert msgspec.msgpack.decode(to_msgpack(r)) == [1]
    assert msgspec.msgpack.decode(to_msgpack(r), type=Stamped).n == 1
    full = msgspec.json.decode(b'[1, "2024-01-01T00:00:00"]', type=stamped)
    assert to_msgpack(full) == msgspec.msgpack.encode(full)


def test_deep_recursion_is_judged_alike() -> None:
    rebuilt = _rebuilt(Tree)
    for leaf, valid in ((b'{"value": 2}', True), (b'{"value": "x"}', False)):
        data = b'{"value": 1, "next": ' * 200 + leaf + b"}" * 200
        assert check(Tree, rebuilt, data, msgspec.json.decode) is valid
        data = msgspec.msgpack.encode(msgspec.json.decode(data))
        assert check(Tree, rebuilt, data, msgspec.msgpack.decode) is valid
    too_deep = b'{"value": 1, "next": ' * 5000 + b'{"value": 2}' + b"}" * 5000
    for typ in (Tree, rebuilt):
        with pytest.raises(RecursionError):
            msgspec.json.decode(too_deep, type=typ)


class Strict(msgspec.Struct):
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


def test_user_code_does_not_run_in_the_rebuilt_type() -> None:
    with pytest.raises(msgspec.ValidationError, match="negative"):
        msgspec.json.decode(b'{"n": -1}', type=Strict)
    r = msgspec.json.decode(b'{"n": -1}', type=_rebuilt(Strict))
    assert r.n == -1 and type(r).__name__ == "Strict"


class Perm(enum.Flag):
    R = 1
    W = 2


class Lenient(enum.Enum):
    A = "a"

    @classmethod
    def _missing_(cls, value: object) -> Lenient:
        return cls.A


class Hooked(msgspec.Struct):
    perm: Perm
    mode: Lenient


def test_enums_with_user_lookup_become_their_value_type() -> None:
    rebuilt = _rebuilt(Hooked)
    for ok in (b'{"perm": 3, "mode": "zz"}', b'{"perm": 1, "mode": "a"}'):
        msgspec.json.decode(ok, type=Hooked)
        msgspec.json.decode(ok, type=rebuilt)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"perm": 4, "mode": "a"}', type=Hooked)
    msgspec.json.decode(b'{"perm": 4, "mode": "a"}', type=rebuilt)  # a superset: shard narrows
    with pytest.raises(msgspec.ValidationError, match=r"\$\.mode"):
        msgspec.json.decode(b'{"perm": 1, "mode": 1}', type=rebuilt)


class Odd(msgspec.Struct):
    raw: msgspec.Raw
    custom: complex
    documented: Annotated[int, Meta(ge=0, title="n", extra={"hook": print})] = 0


def test_what_cannot_be_described_accepts_anything() -> None:
    desc = describe(Odd)
    kinds = [type(f.type).__name__ for f in desc.structs[0].fields]
    assert kinds == ["AnyNode", "AnyNode", "IntNode"]
    msgspec.to_builtins(desc)  # the Meta's extra (a function) was left out
    r = msgspec.json.decode(b'{"raw": [1], "custom": "whatever"}', type=rebuild(desc))
    assert r.raw == [1] and r.custom == "whatever"


def test_rebuild_needs_no_user_module() -> None:
    desc = msgspec.msgpack.encode(describe(Drawing))
    payload = b'{"mainShape": {"kind": "tri", "a": 1}, "allShapes": [], "@title": "t"}'
    script = (
        "import sys, msgspec\n"
        "from aqnode.wiretypes import TypeDesc, rebuild\n"
        "R = rebuild(msgspec.msgpack.decode(sys.stdin.buffer.read(), type=TypeDesc))\n"
        f"print(msgspec.json.decode({payload!r}, type=R))\n"
        f"assert {__name__!r} not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=desc,
        capture_output=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.decode().startswith("Drawing(main_shape=Tri(a=1, b=UNSET)")
