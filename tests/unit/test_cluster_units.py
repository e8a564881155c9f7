"""Cluster mode's in-process pieces, without network or Redis: the master's assignment
table, the member ring, a peer's circuit breaker and the router (with fake peers, a fake
master and a fake core)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.client.connection import ForwardMarks
from aqnode.cluster.assignment import AssignmentTable
from aqnode.cluster.membership import ClusterState, MemberStatus
from aqnode.cluster.peers import CircuitBreaker, Peers
from aqnode.cluster.router import MAX_REROUTES, Router
from aqnode.config import ClusterConfig, Deadlines
from aqnode.supervisor.live import Call
from aqnode.util.ring import MemberRing, entity_key

_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 5.0  #: the longest any awaited condition may take before the test fails

# ---- AssignmentTable ----------------------------------------------------------------------


def _always(_: str) -> bool:
    return True


def _key_placed_on(member: str, live: list[str], prefix: str = "k") -> str:
    """A key that the ring over ``live`` gives to ``member``."""
    ring = MemberRing(live)
    for i in range(10_000):
        key = f"{prefix}:{i}"
        if ring.member_for(key) == member:
            return key
    raise AssertionError(f"no key lands on {member}")


def _assert_consistent(table: AssignmentTable) -> None:
    assert sum(table.load.values()) == len(table.owners)
    assert +table.load == Counter(table.owners.values())  # `+` drops zero counts


def test_existing_assignment_wins_while_its_owner_is_live() -> None:
    table = AssignmentTable(epoch=1)
    live = ["a", "b", "c"]
    key = _key_placed_on("a", live)  # the ring would say "a" ...
    assert table.record("b", [key]) == []  # ... but "b" runs it already
    assert table.resolve(key, live, _always) == "b"
    # Even when "b" is not usable right now: an owner is never changed while alive.
    assert table.resolve(key, live, lambda m: m != "b") == "b"
    assert table.owners == {key: "b"}
    assert table.load == Counter({"b": 1})


def test_new_key_goes_to_the_ring_member_among_live_members() -> None:
    table = AssignmentTable(epoch=1)
    live = ["c", "a", "b"]
    ring = MemberRing(sorted(live))
    keys = [entity_key("order", f"o-{i}") for i in range(300)]
    for key in keys:
        assert table.resolve(key, live, _always) == ring.member_for(key)
    assert set(table.owners.values()) == {"a", "b", "c"}  # each live member got some
    _assert_consistent(table)
    # The same live set in another order builds the same ring.
    other = AssignmentTable(epoch=1)
    for key in keys:
        assert other.resolve(key, ["b", "c", "a"], _always) == table.owners[key]


def test_ring_only_names_live_members() -> None:
    table = AssignmentTable(epoch=1)
    live = ["a", "c"]  # "b" is a member of the group, but dead
    for i in range(200):
        assert table.resolve(f"k:{i}", live, _always) in live


def test_unusable_ring_choice_goes_to_least_loaded_usable_member() -> None:
    live = ["a", "b", "c"]
    key = _key_placed_on("b", live, prefix="new")
    table = AssignmentTable(epoch=1)
    table.record("a", ["x:1", "x:2"])
    table.record("c", ["x:3"])
    assert table.resolve(key, live, lambda m: m != "b") == "c"  # c owns 1, a owns 2
    assert table.load == Counter({"a": 2, "c": 2})
    _assert_consistent(table)


def test_least_loaded_ties_go_by_name() -> None:
    live = ["a", "b", "c"]
    key = _key_placed_on("b", live, prefix="new")
    table = AssignmentTable(epoch=1)
    table.record("c", ["x:1"])
    table.record("a", ["x:2"])
    assert table.resolve(key, live, lambda m: m != "b") == "a"
    # With nobody loaded at all, the lowest usable name.
    empty = AssignmentTable(epoch=1)
    assert empty.resolve(key, live, lambda m: m != "b") == "a"


def test_no_usable_member_keeps_the_ring_choice() -> None:
    live = ["a", "b", "c"]
    key = _key_placed_on("b", live)
    table = AssignmentTable(epoch=1)
    assert table.resolve(key, live, lambda m: False) == "b"
    _assert_consistent(table)


def test_forget_member_drops_its_keys_and_load() -> None:
    table = AssignmentTable(epoch=3)
    table.record("a", ["k:1", "k:2"])
    table.record("b", ["k:3", "k:4", "k:5"])
    assert table.reported == {"a", "b"}
    assert table.forget_member("b") == 3
    assert table.owners == {"k:1": "a", "k:2": "a"}
    assert "b" not in table.load
    assert table.reported == {"a"}
    assert len(table) == 2
    _assert_consistent(table)
    assert table.forget_member("b") == 0  # twice is harmless
    assert table.forget_member("nobody") == 0
    # A forgotten key is placed anew when next asked for.
    assert table.resolve("k:3", ["a"], _always) == "a"
    assert table.load == Counter({"a": 3})
    _assert_consistent(table)


def test_record_returns_conflicts_and_keeps_the_first_owner() -> None:
    table = AssignmentTable(epoch=1)
    assert table.record("a", ["k:1", "k:2"]) == []
    assert table.record("b", ["k:2", "k:3", "k:1"]) == ["k:2", "k:1"]
    assert table.owners == {"k:1": "a", "k:2": "a", "k:3": "b"}
    assert table.load == Counter({"a": 2, "b": 1})
    assert table.reported == {"a", "b"}
    # A member repeating its own keys is no conflict and counts nothing twice.
    assert table.record("a", ["k:1", "k:1", "k:2"]) == []
    assert table.load == Counter({"a": 2, "b": 1})
    # A member with nothing is still reported.
    assert table.record("c", []) == []
    assert table.reported == {"a", "b", "c"}
    _assert_consistent(table)


def test_key_of_a_dead_member_is_reassigned_with_consistent_load() -> None:
    table = AssignmentTable(epoch=2)
    table.record("b", ["k:1", "k:2"])
    table.record("a", ["k:3"])
    live = ["a", "c"]  # "b" died and was not forgotten yet
    new_owner = table.resolve("k:1", live, _always)
    assert new_owner in live
    assert new_owner == MemberRing(live).member_for("k:1")
    assert table.owners["k:1"] == new_owner
    assert table.load["b"] == 1
    _assert_consistent(table)
    # Once reassigned, the new owner keeps it (it is live).
    assert table.resolve("k:1", ["a", "b", "c"], _always) == new_owner
    assert table.resolve("k:2", live, lambda m: True) in live
    assert table.load["b"] == 0
    _assert_consistent(table)


def test_load_stays_consistent_through_random_operations() -> None:
    rng = random.Random(20240611)
    members = ["a", "b", "c", "d", "e"]
    table = AssignmentTable(epoch=1)
    for _ in range(3000):
        op = rng.random()
        if op < 0.15:
            sid = rng.choice(members)
            conflicts = table.record(sid, [f"k:{rng.randrange(400)}" for _ in range(5)])
            assert all(table.owners[k] != sid for k in conflicts)
        elif op < 0.2:
            table.forget_member(rng.choice(members))
        else:
            live = rng.sample(members, rng.randint(1, len(members)))
            down = rng.choice(members)

            def usable(member: str, down: str = down) -> bool:
                return member != down

            owner = table.resolve(f"k:{rng.randrange(400)}", live, usable)
            assert owner in live
        _assert_consistent(table)
        assert all(count >= 0 for count in table.load.values())


# ---- MemberRing ---------------------------------------------------------------------------

KEYS = [entity_key("order", f"o-{i}") for i in range(10_000)]


def test_member_ring_is_deterministic_across_instances_and_input_order() -> None:
    one = MemberRing(["node-a", "node-b", "node-c"])
    two = MemberRing(["node-c", "node-a", "node-b"])
    three = MemberRing(["node-b", "node-c", "node-a", "node-b"])  # duplicates ignored
    first = [one.member_for(k) for k in KEYS]
    assert first == [two.member_for(k) for k in KEYS]
    assert first == [three.member_for(k) for k in KEYS]
    fresh = MemberRing(["node-a", "node-b", "node-c"])
    assert first == [fresh.member_for(k) for k in KEYS]


def test_member_ring_does_not_depend_on_the_interpreters_hash_seed() -> None:
    code = (
        "import json, sys\n"
        "from aqnode.util.ring import MemberRing\n"
        "members, keys = json.load(sys.stdin)\n"
        "r = MemberRing(members)\n"
        "json.dump([r.member_for(k) for k in keys], sys.stdout)\n"
    )
    members = ["node-c", "node-a", "node-b", "node-d"]
    keys = KEYS[:500]
    here = MemberRing(members)
    expected = [here.member_for(k) for k in keys]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(_ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([members, keys]),
            capture_output=True,
            text=True,
            env=env,
            cwd=_ROOT,
            timeout=30,
            check=True,
        )
        assert json.loads(done.stdout) == expected


def test_adding_a_fourth_member_moves_about_a_quarter_of_keys_to_it() -> None:
    before = MemberRing(["node-a", "node-b", "node-c"])
    after = MemberRing(["node-a", "node-b", "node-c", "node-d"])
    moved = [(before.member_for(k), after.member_for(k)) for k in KEYS]
    changed = [(old, new) for old, new in moved if old != new]
    assert 0.10 * len(KEYS) < len(changed) < 0.40 * len(KEYS)
    # Consistent hashing: a key only ever moves to the new member.
    assert {new for _, new in changed} == {"node-d"}


def test_every_member_gets_a_share() -> None:
    for members in (["node-a", "node-b"], ["node-a", "node-b", "node-c", "node-d"]):
        ring = MemberRing(members)
        counts = Counter(ring.member_for(k) for k in KEYS)
        assert set(counts) == set(members)
        fair = len(KEYS) / len(members)
        for member in members:
            assert counts[member] > 0.5 * fair, (member, counts)


def test_a_ring_of_one_and_an_empty_ring() -> None:
    assert {MemberRing(["solo"]).member_for(k) for k in KEYS[:100]} == {"solo"}
    with pytest.raises(ValueError):
        MemberRing([])


# ---- CircuitBreaker -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _open_breaker(clock: FakeClock, threshold: int = 3, cooldown_s: float = 2.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, cooldown_s, clock=clock)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "open"
    return breaker


def test_breaker_opens_after_threshold_failures_in_a_row() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 2.0, clock=clock)
    assert breaker.state == "closed"
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
        assert breaker.state == "closed"
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open"
    assert breaker.opened_at == clock.now
    # Open: every call is refused until the cooldown has passed.
    for _ in range(5):
        assert not breaker.allow()
    clock.now += 1.999
    assert breaker.state == "open"
    assert not breaker.allow()


def test_breaker_counts_failures_in_a_row_only() -> None:
    breaker = CircuitBreaker(3, 2.0, clock=FakeClock())
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    assert breaker.failures == 0
    breaker.failed()
    breaker.failed()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_breaker_half_open_lets_exactly_one_call_through_and_success_closes() -> None:
    clock = FakeClock()
    breaker = _open_breaker(clock)
    clock.now += 2.0
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it is out
    assert not breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.failures == 0
    assert breaker.opened_at is None
    assert all(breaker.allow() for _ in range(5))
    # Closed again, it takes `threshold` new failures to open.
    breaker.failed()
    breaker.failed()
    assert breaker.state == "closed"


def test_breaker_half_open_failure_reopens() -> None:
    clock = FakeClock()
    breaker = _open_breaker(clock)
    clock.now += 2.5
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open"
    assert breaker.opened_at == clock.now  # a new cooldown from now
    assert not breaker.allow()
    clock.now += 1.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow()


def test_breaker_threshold_of_one() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 0.5, clock=clock)
    breaker.failed()
    assert breaker.state == "open"
    clock.now += 0.5
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"


# ---- Router -------------------------------------------------------------------------------

ME = "node-a"
OTHER = "node-b"
OTHER_ADDRESS = "10.0.0.2:7002"
DEAD = "node-c"
KEY = "order:1"

#: small failover times, so that a petition's retries end within about a second
CONFIG = ClusterConfig(enabled=True, node_ttl_ms=1, leader_debounce_ms=1)

Homes = list[tuple[str, str]]


def _state(epoch: int = 5, *, dead_alive: bool = False) -> ClusterState:
    return ClusterState(
        master=ME,
        epoch=epoch,
        members=[
            MemberStatus(ME, "10.0.0.1:7001", True, "master"),
            MemberStatus(OTHER, OTHER_ADDRESS, True, "replica"),
            MemberStatus(DEAD, "10.0.0.3:7003", dead_alive, "replica"),
        ],
    )


@dataclass
class Forwarded:
    env: Envelope
    wait: bool
    timeout_ms: int
    epoch: int
    hops: int
    future: asyncio.Future[SendResult]


class FakePeer:
    def __init__(self, server_id: str, address: str) -> None:
        self.server_id = server_id
        self.address = address
        self.forwarded: list[Forwarded] = []

    def forward(
        self, env: Envelope, *, wait: bool, timeout_ms: int, marks: ForwardMarks
    ) -> asyncio.Future[SendResult]:
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self.forwarded.append(Forwarded(env, wait, timeout_ms, marks.epoch, marks.hops, future))
        return future


class FakePeers:
    def __init__(self) -> None:
        self.peers: dict[str, FakePeer] = {}
        self.gets: list[tuple[str, str]] = []

    def get(self, server_id: str, address: str) -> FakePeer:
        self.gets.append((server_id, address))
        return self.peers.setdefault(server_id, FakePeer(server_id, address))


class FakeMaster:
    """``ask_master``: answers from ``script`` first (a list of homes, or an exception to
    raise), then from ``always`` if set, else waits for the test to resolve the future
    that :meth:`next_ask` hands it."""

    def __init__(self) -> None:
        self.asks: list[tuple[int, list[str]]] = []
        self.script: list[Homes | BaseException] = []
        self.always: BaseException | None = None
        self._pending: asyncio.Queue[asyncio.Future[Homes]] = asyncio.Queue()

    async def __call__(self, epoch: int, keys: list[str]) -> Homes:
        self.asks.append((epoch, list(keys)))
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        if self.always is not None:
            raise self.always
        future: asyncio.Future[Homes] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(future)
        return await future

    async def next_ask(self) -> asyncio.Future[Homes]:
        return await asyncio.wait_for(self._pending.get(), WAIT_S)


@dataclass
class Harness:
    config: ClusterConfig = CONFIG
    state: ClusterState = field(default_factory=_state)
    master: FakeMaster = field(default_factory=FakeMaster)
    peers: FakePeers = field(default_factory=FakePeers)
    resubmits: list[list[Call]] = field(default_factory=list)
    replies: list[tuple[str, SendResult]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._resubmitted: asyncio.Queue[list[Call]] = asyncio.Queue()
        self._replied: asyncio.Queue[tuple[str, SendResult]] = asyncio.Queue()
        self.router = Router(
            ME,
            self.config,
            lambda: self.state,
            cast(Peers, self.peers),
            self.master,
            self._resubmit,
            lambda entity_type: 5000,
        )

    def _resubmit(self, calls: list[Call]) -> None:
        self.resubmits.append(list(calls))
        self._resubmitted.put_nowait(list(calls))

    def call(self, mid: str, *, wait: bool = False, epoch: int = 0, hops: int = 0) -> Call:
        def reply(result: SendResult) -> None:
            self.replies.append((mid, result))
            self._replied.put_nowait((mid, result))

        env = Envelope("order", "Place", "1", b"\x80", message_id=mid)
        return Call(envelope=env, wait=wait, timeout_ms=0, reply=reply, epoch=epoch, hops=hops)

    async def next_resubmit(self) -> list[Call]:
        return await asyncio.wait_for(self._resubmitted.get(), WAIT_S)

    async def next_reply(self) -> tuple[str, SendResult]:
        return await asyncio.wait_for(self._replied.get(), WAIT_S)

    def peer(self) -> FakePeer:
        return self.peers.peers[OTHER]


def run(scenario: Callable[[Harness], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        harness = Harness(**kwargs)
        try:
            await scenario(harness)
        finally:
            await harness.router.close()

    asyncio.run(main())


def _error(result: SendResult) -> dict[str, Any]:
    assert not result.ok
    assert result.error is not None
    return result.error


# (a) -------------------------------------------------------------------------------------


def test_take_is_true_for_owned_keys() -> None:
    async def scenario(h: Harness) -> None:
        await h.router.claim([KEY, "order:2"])
        assert h.router.take(h.call("m1"), KEY)
        assert h.router.take(h.call("m2"), "order:2")
        assert h.router.take(h.call("m3", epoch=5, hops=3), KEY)  # no forwarding needed
        await asyncio.sleep(0)  # let anything scheduled run: nothing may be
        assert h.master.asks == []
        assert h.peers.gets == []
        assert h.replies == [] and h.resubmits == []

    run(scenario)


# (b) -------------------------------------------------------------------------------------


def test_unknown_key_is_held_and_resubmitted_in_order_when_it_is_ours() -> None:
    async def scenario(h: Harness) -> None:
        calls = [h.call(f"m{i}") for i in range(4)]
        assert not h.router.take(calls[0], KEY)
        ask = await h.master.next_ask()
        assert h.master.asks == [(5, [KEY])]
        # Later calls for the same entity wait behind the first, asking nothing more.
        for call in calls[1:]:
            assert not h.router.take(call, KEY)
        await asyncio.sleep(0)
        assert len(h.master.asks) == 1
        assert h.resubmits == [] and h.replies == []

        ask.set_result([(KEY, ME)])
        resubmitted = await h.next_resubmit()
        assert [c.envelope.message_id for c in resubmitted] == ["m0", "m1", "m2", "m3"]
        assert all(a is b for a, b in zip(resubmitted, calls, strict=True))
        assert KEY in h.router.owned
        assert KEY not in h.router.homes
        assert h.router.petitioned == 1
        # Now it knows: the core logs them here.
        assert all(h.router.take(c, KEY) for c in resubmitted)
        assert h.replies == []
        assert h.resubmits == [resubmitted]

    run(scenario)


def test_unknown_keys_asked_in_one_petition() -> None:
    async def scenario(h: Harness) -> None:
        c1, c2, c3 = h.call("m1"), h.call("m2"), h.call("m3")
        assert not h.router.take(c1, "order:1")
        assert not h.router.take(c2, "order:2")
        assert not h.router.take(c3, "order:1")
        ask = await h.master.next_ask()
        assert h.master.asks == [(5, ["order:1", "order:2"])]
        ask.set_result([("order:2", OTHER), ("order:1", ME)])
        first = await h.next_resubmit()
        second = await h.next_resubmit()
        assert [c.envelope.message_id for c in first] == ["m2"]
        assert [c.envelope.message_id for c in second] == ["m1", "m3"]
        assert h.router.owned == {"order:1"}
        assert h.router.homes == {"order:2": OTHER}

    run(scenario)


def test_petition_answered_at_an_old_epoch_is_asked_again() -> None:
    async def scenario(h: Harness) -> None:
        call = h.call("m1")
        assert not h.router.take(call, KEY)
        ask = await h.master.next_ask()
        h.state = _state(epoch=6)  # the master changed while it answered
        ask.set_result([(KEY, OTHER)])
        again = await h.master.next_ask()
        assert h.master.asks == [(5, [KEY]), (6, [KEY])]
        assert h.resubmits == []
        again.set_result([(KEY, ME)])
        assert await h.next_resubmit() == [call]
        assert KEY in h.router.owned
        assert KEY not in h.router.homes

    run(scenario)


# (c) -------------------------------------------------------------------------------------


def test_owner_elsewhere_resubmits_then_forwards_with_hops_and_epoch() -> None:
    async def scenario(h: Harness) -> None:
        c1, c2 = h.call("m1"), h.call("m2", epoch=5, hops=1)
        assert not h.router.take(c1, KEY)
        assert not h.router.take(c2, KEY)
        ask = await h.master.next_ask()
        ask.set_result([(KEY, OTHER)])
        resubmitted = await h.next_resubmit()
        assert resubmitted == [c1, c2]
        assert h.router.homes == {KEY: OTHER}
        assert KEY not in h.router.owned

        # Through the core again: now forwarded, in order, on the owner's stream.
        for call in resubmitted:
            assert not h.router.take(call, KEY)
        assert h.peers.gets == [(OTHER, OTHER_ADDRESS), (OTHER, OTHER_ADDRESS)]
        sent = h.peer().forwarded
        assert [f.env.message_id for f in sent] == ["m1", "m2"]
        assert [f.hops for f in sent] == [1, 2]
        assert [f.epoch for f in sent] == [5, 5]
        assert [f.wait for f in sent] == [False, False]
        assert sent[0].env is c1.envelope
        assert h.router.forwarded == 2

        # The owner's answer goes back as it came, with the owner's address as a hint.
        sent[0].future.set_result(SendResult("m1", True))
        mid, result = await h.next_reply()
        assert mid == "m1"
        assert result.ok
        assert result.owner == OTHER_ADDRESS
        # An owner hint the answer carries already is kept.
        sent[1].future.set_result(SendResult("m2", True, reply=b"\x01", owner="10.9.9.9:1"))
        mid, result = await h.next_reply()
        assert (mid, result.reply, result.owner) == ("m2", b"\x01", "10.9.9.9:1")
        # A handler error from the owner is passed through too.
        c3 = h.call("m3", wait=True)
        assert not h.router.take(c3, KEY)
        assert sent[2].wait is True and sent[2].hops == 1
        failure = errors.HandlerError("boom", remote_type="ValueError").to_dict()
        sent[2].future.set_result(SendResult("m3", False, error=failure))
        mid, result = await h.next_reply()
        assert _error(result)["code"] == errors.HANDLER_ERROR
        assert result.owner == OTHER_ADDRESS
        assert len(h.master.asks) == 1  # the cached home is used; no second petition

    run(scenario)


def test_home_that_left_the_group_is_asked_again() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = "node-gone"  # not in the member list any more
        call = h.call("m1")
        assert not h.router.take(call, KEY)
        assert KEY not in h.router.homes
        ask = await h.master.next_ask()
        assert h.master.asks == [(5, [KEY])]
        later = h.call("m2")
        assert not h.router.take(later, KEY)  # queues behind it
        ask.set_result([(KEY, ME)])
        assert await h.next_resubmit() == [call, later]
        assert h.peers.gets == []

    run(scenario)


def test_forward_without_an_answer_in_time_is_unavailable() -> None:
    config = ClusterConfig(
        enabled=True,
        node_ttl_ms=1,
        leader_debounce_ms=1,
        deadlines=Deadlines(forward_ms=30, and_wait_ms=40),
    )

    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        assert not h.router.take(h.call("m1"), KEY)
        assert not h.router.take(h.call("m2", wait=True), KEY)
        replies = [await h.next_reply(), await h.next_reply()]
        assert [mid for mid, _ in replies] == ["m1", "m2"]
        for mid, result in replies:
            error = _error(result)
            assert error["code"] == errors.UNAVAILABLE
            assert error["message_id"] == mid
            assert mid in error["message"]
        assert "no acknowledgement" in _error(replies[0][1])["message"]
        assert "no reply" in _error(replies[1][1])["message"]
        assert all(f.future.cancelled() for f in h.peer().forwarded)
        assert h.resubmits == []

    run(scenario, config=config)


# (d) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retryable",
    [
        errors.MasterRebuilding("rebuilding"),
        errors.Unavailable("no master yet"),
        errors.StaleEpoch("not master at that epoch"),
    ],
    ids=lambda e: e.code,
)
def test_petition_retries_retryable_answers_then_succeeds(retryable: errors.AqError) -> None:
    async def scenario(h: Harness) -> None:
        h.master.script = [retryable, retryable, [(KEY, ME)]]
        c1, c2 = h.call("m1"), h.call("m2")
        assert not h.router.take(c1, KEY)
        assert not h.router.take(c2, KEY)
        assert await h.next_resubmit() == [c1, c2]
        assert h.master.asks == [(5, [KEY])] * 3
        assert h.replies == []
        assert KEY in h.router.owned

    run(scenario)


def test_non_retryable_petition_error_fails_every_queued_call() -> None:
    async def scenario(h: Harness) -> None:
        h.master.script = [errors.RedisUnavailable("redis is down")]
        calls = [h.call(f"m{i}") for i in range(3)]
        for call in calls:
            assert not h.router.take(call, KEY)
        replies = [await h.next_reply() for _ in calls]
        assert [mid for mid, _ in replies] == ["m0", "m1", "m2"]
        for mid, result in replies:
            assert result.message_id == mid
            assert _error(result)["code"] == errors.REDIS_UNAVAILABLE
            assert _error(result)["message"] == "redis is down"
        assert len(h.master.asks) == 1
        assert h.resubmits == []
        # Nothing is left waiting: the next call for it asks again.
        h.master.script = [[(KEY, ME)]]
        again = h.call("m9")
        assert not h.router.take(again, KEY)
        assert await h.next_resubmit() == [again]

    run(scenario)


def test_unexpected_petition_failure_fails_the_calls_saying_so() -> None:
    async def scenario(h: Harness) -> None:
        h.master.script = [RuntimeError("a bug")]
        assert not h.router.take(h.call("m1"), KEY)
        mid, result = await h.next_reply()
        assert mid == "m1"
        assert _error(result)["code"] == errors.INTERNAL
        assert "a bug" in _error(result)["message"]

    run(scenario)


def test_petition_retries_that_outlast_the_deadline_fail_with_the_last_code() -> None:
    async def scenario(h: Harness) -> None:
        # Rebuilding at first, then no master at all, until the deadline (about 1 s here).
        h.master.script = [errors.MasterRebuilding("rebuilding")] * 2
        h.master.always = errors.Unavailable("the group has no live master yet")
        calls = [h.call("m1"), h.call("m2")]
        for call in calls:
            assert not h.router.take(call, KEY)
        replies = [await h.next_reply(), await h.next_reply()]
        assert [mid for mid, _ in replies] == ["m1", "m2"]
        for _, result in replies:
            assert _error(result)["code"] == errors.UNAVAILABLE
            assert "no live master" in _error(result)["message"]
        assert len(h.master.asks) >= 3
        assert h.resubmits == []
        assert KEY not in h.router.owned

    run(scenario)


# (e) -------------------------------------------------------------------------------------


def test_forwarded_in_call_at_another_epoch_is_refused() -> None:
    async def scenario(h: Harness) -> None:
        await h.router.claim([KEY])
        for epoch in (4, 6):
            with pytest.raises(errors.StaleEpoch) as caught:
                h.router.take(h.call("m1", epoch=epoch, hops=1), KEY)
            assert caught.value.code == errors.STALE_EPOCH
            assert str(epoch) in caught.value.message
        # Same epoch: taken; epoch 0 is a call from a client (no epoch): taken.
        assert h.router.take(h.call("m2", epoch=5, hops=1), KEY)
        assert h.router.take(h.call("m3"), KEY)
        # A refused call for an unknown entity is not held either.
        with pytest.raises(errors.StaleEpoch):
            h.router.take(h.call("m4", epoch=4, hops=1), "order:unknown")
        await asyncio.sleep(0)
        assert h.master.asks == []

    run(scenario)


# (f) -------------------------------------------------------------------------------------


def test_call_at_max_hops_that_must_be_forwarded_is_refused() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        hops = CONFIG.max_forward_hops
        with pytest.raises(errors.ForwardHopsExceeded) as caught:
            h.router.take(h.call("m1", epoch=5, hops=hops), KEY)
        assert caught.value.code == errors.FORWARD_HOPS_EXCEEDED
        with pytest.raises(errors.ForwardHopsExceeded):
            h.router.take(h.call("m2", epoch=5, hops=hops + 1), KEY)
        assert h.peers.gets == []
        # One hop fewer still goes, as the last one.
        assert not h.router.take(h.call("m3", epoch=5, hops=hops - 1), KEY)
        assert [f.hops for f in h.peer().forwarded] == [hops]

    run(scenario)


def test_call_at_max_hops_after_a_petition_is_refused_when_resubmitted() -> None:
    async def scenario(h: Harness) -> None:
        call = h.call("m1", epoch=5, hops=CONFIG.max_forward_hops)
        assert not h.router.take(call, KEY)
        ask = await h.master.next_ask()
        ask.set_result([(KEY, OTHER)])
        assert await h.next_resubmit() == [call]
        with pytest.raises(errors.ForwardHopsExceeded):
            h.router.take(call, KEY)

    run(scenario)


# (g) -------------------------------------------------------------------------------------


def test_forward_refused_for_a_stale_epoch_goes_round_again() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        call = h.call("m1")
        assert not h.router.take(call, KEY)
        (sent,) = h.peer().forwarded
        stale = errors.StaleEpoch("node-b is at epoch 6").to_dict()
        h.master.script = [[(KEY, OTHER)]]
        sent.future.set_result(SendResult("m1", False, error=stale))
        assert await h.next_resubmit() == [call]  # after asking the master again
        assert call.reroutes == 1
        assert h.master.asks[-1][1] == [KEY]  # its home was asked again
        assert h.replies == []

    run(scenario)


def test_forward_refused_for_a_stale_epoch_too_often_is_replied() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        call = h.call("m1")
        call.reroutes = MAX_REROUTES
        assert not h.router.take(call, KEY)
        (sent,) = h.peer().forwarded
        sent.future.set_result(
            SendResult("m1", False, error=errors.StaleEpoch("still stale").to_dict())
        )
        mid, result = await h.next_reply()
        assert mid == "m1"
        assert _error(result)["code"] == errors.STALE_EPOCH
        assert result.owner == OTHER_ADDRESS
        assert h.resubmits == []

    run(scenario)


def test_forward_unavailable_is_replied_naming_the_message_id() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        call = h.call("msg-42")
        assert not h.router.take(call, KEY)
        (sent,) = h.peer().forwarded
        down = errors.Unavailable("peer node-b at 10.0.0.2:7002 failed 3 times").to_dict()
        sent.future.set_result(SendResult("msg-42", False, error=down))
        mid, result = await h.next_reply()
        assert mid == "msg-42"
        error = _error(result)
        assert error["code"] == errors.UNAVAILABLE
        assert "msg-42" in error["message"]
        assert error["message_id"] == "msg-42"
        assert KEY in error["message"]
        assert OTHER_ADDRESS in error["message"]
        assert "failed 3 times" in error["message"]  # the owner's own reason
        assert result.message_id == "msg-42"
        assert result.owner == OTHER_ADDRESS
        assert h.resubmits == []
        assert h.router.homes == {KEY: OTHER}

    run(scenario)


# (h) -------------------------------------------------------------------------------------


def test_report_forgets_homes_and_lists_owned_keys_sorted() -> None:
    async def scenario(h: Harness) -> None:
        await h.router.claim(["order:3", "order:1"])
        await h.router.claim(["order:2", "order:1"])
        h.router.homes.update({"order:8": OTHER, "order:9": DEAD})
        assert h.router.report() == ["order:1", "order:2", "order:3"]
        assert h.router.homes == {}
        assert h.router.owned == {"order:1", "order:2", "order:3"}

    run(scenario)


def test_on_view_with_a_new_epoch_forgets_every_home() -> None:
    async def scenario(h: Harness) -> None:
        await h.router.claim([KEY])
        h.router.homes.update({"order:8": OTHER, "order:9": DEAD})
        h.state = _state(epoch=6)
        h.router.on_view(h.state, changed_epoch=True)
        assert h.router.homes == {}
        assert h.router.owned == {KEY}

    run(scenario)


def test_on_view_at_the_same_epoch_drops_homes_on_dead_members() -> None:
    async def scenario(h: Harness) -> None:
        await h.router.claim([KEY])
        h.router.homes.update({"order:7": OTHER, "order:8": DEAD, "order:9": "node-gone"})
        h.router.on_view(_state(dead_alive=True), changed_epoch=False)
        assert h.router.homes == {"order:7": OTHER, "order:8": DEAD}  # node-gone: no member
        h.router.on_view(_state(), changed_epoch=False)  # node-c died
        assert h.router.homes == {"order:7": OTHER}
        assert h.router.owned == {KEY}

    run(scenario)


# ---- a known defect, kept as a reproduction ---------------------------------------------


def test_stale_epoch_reroute_keeps_its_place_ahead_of_later_calls() -> None:
    async def scenario(h: Harness) -> None:
        h.router.homes[KEY] = OTHER
        first = h.call("m1")
        assert not h.router.take(first, KEY)
        (sent,) = h.peer().forwarded
        sent.future.set_result(SendResult("m1", False, error=errors.StaleEpoch("x").to_dict()))
        await asyncio.sleep(0)  # one loop turn: the future's done-callback runs
        assert KEY not in h.router.homes and h.replies == []  # refused, to go round again
        # The same sender's next call for the entity arrives before the reroute.
        second = h.call("m2")
        h.master.script = [[(KEY, OTHER)]]
        assert not h.router.take(second, KEY)
        order = [c.envelope.message_id for c in await h.next_resubmit()]
        assert order == ["m1", "m2"]  # FIFO per sender: the reroute kept its place

    run(scenario)


# ---- the master in degraded mode --------------------------------------------------------


def test_a_master_whose_redis_fails_resigns_its_duties_and_resumes_them() -> None:
    """Degraded mode: petitions get UNAVAILABLE (retried by the asking node) and no dead
    member's log is adopted while the master's Redis health check fails; both come back
    when it passes again, with the same table."""
    from aqnode.cluster.master import MasterDuties

    async def scenario() -> None:
        adopted: list[str] = []
        state = _state(dead_alive=False)
        duties = MasterDuties(
            ME,
            lambda: state,
            cast(Peers, SimpleNamespace(usable=lambda sid: True)),
            lambda: [],
            lambda dead: cast(Any, adopted.append(dead)),
            lambda key, sid, token: None,
        )
        table = AssignmentTable(state.epoch)
        table.reported.update({ME, OTHER})
        duties.table = table
        duties.resign("Redis does not answer")
        with pytest.raises(errors.Unavailable) as refused:
            duties.answer(state.epoch, [KEY])
        assert "stepped down" in refused.value.message
        duties.on_view(state)  # DEAD is dead: still nothing is adopted while resigned
        assert duties._adopting == {}
        duties.resume()
        assert [k for k, _ in duties.answer(state.epoch, [KEY])] == [KEY]
        duties._adopt = lambda sid, table: asyncio.sleep(0)  # type: ignore[method-assign]
        duties.on_view(state)
        assert set(duties._adopting) == {DEAD}
        await asyncio.gather(*duties._adopting.values())

    asyncio.run(scenario())
