"""Races in the supervisor's core, replayed step by step with a scripted log.

The integration tests show the guarantees with real faults; the interleavings here (a
shard dying with a commit in flight, a reply lost to a Redis failure) are too narrow to
hit on purpose with real processes, so the log's answers are given by hand.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from aqnode import ipc
from aqnode.bus import Envelope, SendResult
from aqnode.catalogue import build_catalogue, import_handler_modules
from aqnode.config import parse_config
from aqnode.errors import RedisUnavailable
from aqnode.supervisor.core import Call, NodeCore
from aqnode.supervisor.live import IN_FLIGHT, State
from aqnode.supervisor.validation import Validator
from aqnode.wal import Applied, Failed, Outcome, Refused

Done = Callable[[list[Outcome]], None]


def ok(n: int = 1) -> list[Outcome]:
    """The log's answer when every one of ``n`` transitions applied."""
    return [Applied()] * n


def lost(reason: str, n: int = 1) -> list[Outcome]:
    """The log's answer when a commit's reply was lost: each of its ``n`` items failed."""
    return [Failed(RedisUnavailable(reason))] * n


class ScriptedLog:
    """Records every transition handed in; the test answers each one when it likes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[Any], Done]] = []
        self.on_commit = None

    def _add(self, kind: str, items: Any, done: Done) -> None:
        self.requests.append((kind, list(items), done))

    def enqueue(self, items: Any, done: Done) -> None:
        self._add("enqueue", items, done)

    def dispatch(self, items: Any, done: Done) -> None:
        self._add("dispatch", items, done)

    def undispatch(self, items: Any, done: Done) -> None:
        self._add("undispatch", items, done)

    def finish(self, items: Any, done: Done) -> None:
        self._add("finish", items, done)

    def retry(self, items: Any, done: Done) -> None:
        self._add("retry", items, done)

    def interrupt(self, items: Any, done: Done) -> None:
        self._add("interrupt", items, done)

    def take(self, kind: str) -> tuple[list[Any], Done]:
        for i, (k, items, done) in enumerate(self.requests):
            if k == kind:
                del self.requests[i]
                return items, done
        raise AssertionError(f"no {kind} transition was handed in: {self.requests}")

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.requests]


class Harness:
    def __init__(self, extra: str = "") -> None:
        cfg = parse_config('handlers = ["aqnode.examples.bank"]\nshards = 1\n' + extra)
        import_handler_modules(cfg.handlers)
        catalogue = build_catalogue({})
        self.log = ScriptedLog()
        validator = Validator(catalogue.describe())
        self.core = NodeCore(cfg, validator, self.log, 1)  # type: ignore[arg-type]
        self.sent: list[Any] = []
        self.core.shard_up(0, self.sent.append)

    def send(
        self, account: str = "a1", *, wait: bool = True, message_id: str = ""
    ) -> list[SendResult]:
        replies: list[SendResult] = []
        payload = msgspec.msgpack.encode({"account_id": account, "amount": 1})
        env = Envelope("account", "Deposit", account, payload, message_id=message_id)
        self.core.submit([Call(env, wait, 60000, replies.append)])
        return replies

    def restart_shard(self) -> None:
        self.core.shard_down(0, read_to_the_end=False)
        self.sent = []
        self.core.shard_up(0, self.sent.append)


@pytest.fixture
def h() -> Harness:
    return Harness()


def in_loop(test: Callable[..., None]) -> Callable[..., None]:
    """Run the (synchronous) test body inside a running event loop, as the core expects."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def body() -> None:
            test(*args, **kwargs)

        asyncio.run(body())

    return run


@in_loop
def test_a_shard_dying_after_its_outcome_does_not_interrupt_the_message(h: Harness) -> None:
    replies = h.send()
    items, done = h.log.take("enqueue")
    done(ok())
    mid = items[0].message_id
    h.core.on_shard_items(0, [ipc.Outcome(mid, True, msgspec.msgpack.encode({"x": 1}))])
    h.core.shard_down(0, read_to_the_end=False)  # the shard's last frame was read, then it died
    assert "interrupt" not in h.log.kinds()
    _, finished = h.log.take("finish")
    finished(ok())
    assert replies[0].ok, replies[0].error


@in_loop
def test_a_dispatch_whose_reply_was_lost_is_taken_back_and_runs(h: Harness) -> None:
    first = h.send()
    second = h.send()  # queued behind the first: it will ask for its dispatch mark
    (one,), done_1 = h.log.take("enqueue")
    (two,), done_2 = h.log.take("enqueue")
    done_1(ok())
    done_2([Applied(seq=2)])
    mid_1, mid_2 = one.message_id, two.message_id
    h.core.on_shard_items(0, [ipc.Outcome(mid_1, True, b"")])
    h.log.take("finish")[1](ok())
    assert first[0].ok
    h.core.on_shard_items(0, [ipc.Dispatch(mid_2)])
    h.log.take("dispatch")[1](lost("connection reset"))  # it landed, unseen
    assert h.sent[-1] == ipc.DispatchResult(mid_2, False, h.sent[-1].error, again=True)
    h.core.on_shard_items(0, [ipc.Dispatch(mid_2)])  # the shard asks again
    h.log.take("dispatch")[1]([Refused("dispatched")])
    assert h.sent[-1].again and not h.sent[-1].ok
    taken, undone = h.log.take("undispatch")
    assert taken == [mid_2]
    undone(ok())
    h.core.on_shard_items(0, [ipc.Dispatch(mid_2)])
    h.log.take("dispatch")[1](ok())
    assert h.sent[-1] == ipc.DispatchResult(mid_2, True)
    assert "interrupt" not in h.log.kinds() and second == []


@in_loop
def test_a_fast_path_message_in_flight_when_its_shard_dies_runs_on_the_next(
    h: Harness,
) -> None:
    replies = h.send()
    items, done = h.log.take("enqueue")
    assert items[0].dispatch, "an idle entity's message is written dispatched at once"
    h.restart_shard()  # dies while the enqueue commit is in flight
    done(ok())
    taken, undone = h.log.take("undispatch")
    assert taken == [items[0].message_id] and h.sent == []
    undone(ok())
    (delivered,) = h.sent
    assert delivered.message_id == items[0].message_id and not delivered.dispatched
    assert replies == []  # still waiting: it was never interrupted


@in_loop
def test_refused_or_failed_sends_do_not_count_as_workers() -> None:
    h = Harness("max_total_workers = 2\n")
    for i in range(3):
        h.send(f"done-{i}", wait=False, message_id=f"old-{i}")
        h.log.take("enqueue")[1]([Refused("completed")])  # idempotent resends of finished ids
    h.send("lost", wait=False)
    h.log.take("enqueue")[1](lost("gone"))
    accepted = h.send("fresh", wait=False)
    assert accepted == []  # admitted, waiting for its commit: not refused
    assert h.log.kinds() == ["enqueue"]


@in_loop
def test_max_total_queue_depth_counts_messages_not_yet_logged() -> None:
    h = Harness("max_total_queue_depth = 10\n")
    replies: list[SendResult] = []
    calls = []
    for i in range(50):
        payload = msgspec.msgpack.encode({"account_id": f"k{i}", "amount": 1})
        env = Envelope("account", "Deposit", f"k{i}", payload)
        calls.append(Call(env, False, 0, replies.append))
    h.core.submit(calls)
    items, _ = h.log.take("enqueue")
    assert len(items) == 10
    assert len(replies) == 40
    assert {r.error["code"] for r in replies if r.error} == {"QUEUE_DEPTH_EXCEEDED"}


@in_loop
def test_an_ambiguous_enqueue_says_so_and_is_adopted_if_it_landed(h: Harness) -> None:
    replies = h.send(wait=False)
    items, done = h.log.take("enqueue")
    done(lost("connection reset"))
    (reply,) = replies
    assert reply.error is not None and reply.error["code"] == "REDIS_UNAVAILABLE"
    assert "may or may not" in reply.error["message"]
    assert reply.error["message_id"] == items[0].message_id
    assert [a.message_id for a in h.core.uncertain] == [items[0].message_id]


@in_loop
def test_a_reply_for_a_dead_shards_bus_call_is_dropped(h: Harness) -> None:
    payload = msgspec.msgpack.encode({"account_id": "b1", "amount": 1})
    h.core.on_shard_items(0, [ipc.Submit(3, "account", "Deposit", "b1", payload, False, 0)])
    h.restart_shard()
    h.log.take("enqueue")[1](ok())
    assert not any(isinstance(x, ipc.SubmitResult) for x in h.sent)


def _live_totals(h: Harness) -> tuple[int, dict[str, int], set[str]]:
    return h.core.ledger.queued_total, dict(h.core.ledger.depth), set(h.core.ledger.new_entities)


@in_loop
def test_a_shard_crash_does_not_count_its_live_messages_twice() -> None:
    """Bug: shard_down tracked every live message again, so limits drifted per crash."""
    h = Harness("max_total_queue_depth = 30\n")
    for i in range(10):
        h.send(f"a{i}", wait=False)
        _, done = h.log.take("enqueue")
        done(ok())
    assert h.core.ledger.queued_total == 10
    h.core.shard_down(0, read_to_the_end=True)
    assert h.core.ledger.queued_total == 10  # the same ten, still unfinished
    # The ten were `dispatched` (idle entities) but never started: taken back, then run.
    ids, undone = h.log.take("undispatch")
    undone(ok(len(ids)))
    h.sent = []
    h.core.shard_up(0, h.sent.append)
    delivered = [x for x in h.sent if isinstance(x, ipc.Deliver)]
    assert sorted(d.message_id for d in delivered) == sorted(ids)
    h.core.on_shard_items(0, [ipc.Outcome(d.message_id, True, b"\xc0") for d in delivered])
    finished, fin_done = h.log.take("finish")
    fin_done(ok(len(finished)))
    assert _live_totals(h) == (0, {}, set())
    replies = [r for i in range(30) for r in h.send(f"b{i}", wait=False)]
    assert not [r for r in replies if not r.ok]  # nothing refused: all 30 admitted
    assert h.core.ledger.queued_total == 30


@in_loop
def test_a_dead_shards_dispatched_but_never_started_message_runs_again(h: Harness) -> None:
    replies = h.send()
    (item,), done = h.log.take("enqueue")
    done(ok())  # idle entity: logged `dispatched` and delivered with the go-ahead
    h.core.shard_down(0, read_to_the_end=True)  # no Started frame came: it never ran
    assert "interrupt" not in h.log.kinds()
    (mid,), undone = h.log.take("undispatch")
    assert mid == item.message_id
    undone(ok())
    h.sent = []
    h.core.shard_up(0, h.sent.append)
    (again,) = [x for x in h.sent if isinstance(x, ipc.Deliver)]
    assert again.message_id == mid and not again.dispatched  # it asks for a new mark
    assert replies == []  # its waiter still waits for the one real run


@in_loop
def test_a_started_message_is_interrupted_when_its_shard_dies(h: Harness) -> None:
    replies = h.send()
    (item,), done = h.log.take("enqueue")
    done(ok())
    h.core.on_shard_items(0, [ipc.Started(item.message_id)])
    h.core.shard_down(0, read_to_the_end=True)
    assert "undispatch" not in h.log.kinds()
    (entry,), _ = h.log.take("interrupt")
    assert entry.message_id == item.message_id
    assert replies and replies[0].error is not None and replies[0].error["code"] == "INTERRUPTED"


@in_loop
def test_without_the_shards_last_frames_every_dispatched_message_is_interrupted(
    h: Harness,
) -> None:
    h.send()
    (item,), done = h.log.take("enqueue")
    done(ok())
    h.core.shard_down(0, read_to_the_end=False)  # its last frames may be lost: assume started
    (entry,), _ = h.log.take("interrupt")
    assert entry.message_id == item.message_id


@in_loop
def test_a_started_message_is_never_taken_back_even_if_its_dispatch_reply_was_lost(
    h: Harness,
) -> None:
    """Bug: a worker task that died after a run asked for a new mark; the core found the
    entry still `dispatched`, took it back and the message ran again (4 runs of one)."""
    h.send()
    (item,), done = h.log.take("enqueue")
    done(ok())
    mid = item.message_id
    h.core.on_shard_items(0, [ipc.Started(mid), ipc.Dispatch(mid)])
    _, dispatched = h.log.take("dispatch")
    dispatched([Refused("dispatched")])  # the log: it is already dispatched
    assert "undispatch" not in h.log.kinds()
    (entry,), _ = h.log.take("interrupt")
    assert entry.message_id == mid


def test_message_states_read_as_the_words_replies_and_the_nodes_log_show() -> None:
    assert f"{State.DISPATCHED}" == "dispatched" and str(State.FINISHING) == "finishing"
    in_flight = {"dispatching", "retrying", "interrupting", "undispatching"}
    assert {str(s) for s in IN_FLIGHT} == in_flight
