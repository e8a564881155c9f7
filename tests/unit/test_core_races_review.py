"""Races in the supervisor core found in review (scripted log): each failed on cde5013.

FIFO when a fast-path message is taken back after a restart; an undispatch whose reply
was lost; a dispatch asked while its mark was being taken back. They reuse the harness
of test_core_races.py.
"""

from __future__ import annotations

import asyncio

import msgspec

from aqnode import ipc
from aqnode.supervisor.live import State
from aqnode.wal import Refused
from tests.unit.test_core_races import Harness, in_loop, lost, ok


@in_loop
def test_review_fifo_kept_when_a_fast_path_message_is_taken_back_after_a_restart() -> None:
    """M1 (idle entity: logged `dispatched`) and M2 (same entity) are admitted; the shard
    dies and its successor is ready before the commits answer. M1 is taken back
    (undispatch, in flight), but the port is open, so M2 is delivered at once and M1
    only after the undispatch: M2 runs before M1."""
    h = Harness()
    h.send("e1", wait=False)
    h.send("e1", wait=False)
    (m1,), done_1 = h.log.take("enqueue")
    (m2,), done_2 = h.log.take("enqueue")
    assert m1.dispatch and not m2.dispatch
    h.restart_shard()  # dies and comes back while both commits are in flight
    done_1(ok())
    done_2(ok())
    _, undone = h.log.take("undispatch")
    undone(ok())
    order = [x.message_id for x in h.sent if isinstance(x, ipc.Deliver)]
    assert order == [m1.message_id, m2.message_id], f"delivered out of order: {order}"


def test_review_an_undispatch_whose_reply_was_lost_does_not_drop_the_message() -> None:
    """undispatch.lua lands, its reply is lost (connection reset, abandon_in_flight); the
    retry 0.2 s later finds it `enqueued` (Refused) and the core *drops* the message:
    its waiter is told it was not run, yet it stays `enqueued` in the log and runs only
    at the next node start (after the entity's later messages)."""

    async def body() -> None:
        h = Harness()
        replies = h.send()
        (item,), done = h.log.take("enqueue")
        done(ok())
        h.core.shard_down(0, read_to_the_end=True)  # never started: taken back
        _, undone = h.log.take("undispatch")
        undone(lost("connection reset"))  # it landed: the log says `enqueued` now
        await asyncio.sleep(0.3)  # LOG_RETRY_S
        _, undone = h.log.take("undispatch")
        undone([Refused("enqueued")])
        assert replies == [], f"the waiter was told: {replies}"
        assert item.message_id in h.core.live, "the core forgot a message enqueued in the log"
        h.sent = []
        h.core.shard_up(0, h.sent.append)
        assert [x.message_id for x in h.sent if isinstance(x, ipc.Deliver)] == [item.message_id]

    asyncio.run(body())


def _dispatch_lost_then_undispatch_lost(h: Harness) -> tuple[str, list[object]]:
    """Two messages of one entity; the second's Dispatch lands unseen, the shard asks
    again (Refused dispatched -> undispatch), and that undispatch's reply is lost too.
    While the mark is being taken back, the shard's next Dispatch is answered "again"
    without reaching the log; once the retried undispatch lands, the next one is
    granted, and nothing takes that go-ahead back."""
    h.send(wait=False)
    second = h.send()
    (one,), done_1 = h.log.take("enqueue")
    (two,), done_2 = h.log.take("enqueue")
    done_1(ok())
    done_2(ok())
    h.core.on_shard_items(0, [ipc.Started(one.message_id)])
    h.core.on_shard_items(0, [ipc.Outcome(one.message_id, True, msgspec.msgpack.encode(None))])
    h.log.take("finish")[1](ok())
    mid = two.message_id
    h.core.on_shard_items(0, [ipc.Dispatch(mid)])
    h.log.take("dispatch")[1](lost("connection reset"))  # landed, unseen
    h.core.on_shard_items(0, [ipc.Dispatch(mid)])  # the shard asks again after 50 ms
    h.log.take("dispatch")[1]([Refused("dispatched")])
    _, undone = h.log.take("undispatch")
    undone(lost("connection reset"))  # landed: the log says `enqueued`; retried in 0.2 s
    # The shard asks again after 100 ms, before the core's retry of the undispatch:
    h.core.on_shard_items(0, [ipc.Dispatch(mid)])
    assert "dispatch" not in h.log.kinds(), "a dispatch while its mark is being taken back"
    assert h.sent[-1] == ipc.DispatchResult(mid, False, None, again=True)
    return mid, second


async def _undispatch_retry_lands_then_go_ahead(h: Harness, mid: str) -> None:
    await asyncio.sleep(0.3)  # LOG_RETRY_S: the undispatch is retried
    _, undone = h.log.take("undispatch")
    undone([Refused("enqueued")])  # the first try had landed
    assert h.core.live[mid].state == State.ENQUEUED
    h.core.on_shard_items(0, [ipc.Dispatch(mid)])  # the worker asks again
    h.log.take("dispatch")[1](ok())  # enqueued -> dispatched: a real go-ahead
    assert h.sent[-1] == ipc.DispatchResult(mid, True)


def test_review_a_go_ahead_given_is_not_taken_back_by_a_late_undispatch_retry() -> None:
    """Found in review: the retry of an old undispatch fired while the handler ran, took
    the mark of a running message back, and the next start ran it again."""

    async def body() -> None:
        h = Harness()
        mid, _ = _dispatch_lost_then_undispatch_lost(h)
        await _undispatch_retry_lands_then_go_ahead(h, mid)
        await asyncio.sleep(0.3)
        assert "undispatch" not in h.log.kinds(), "undispatch of a message given the go-ahead"
        assert h.core.live[mid].state == State.DISPATCHED

    asyncio.run(body())


def test_review_a_running_message_is_not_interrupted_by_a_late_undispatch_retry() -> None:
    """Found in review: with the Started frame read first, the stale retry interrupted a
    message running on a live shard (its waiter told INTERRUPTED, a replay ran it again)."""

    async def body() -> None:
        h = Harness()
        mid, second = _dispatch_lost_then_undispatch_lost(h)
        await _undispatch_retry_lands_then_go_ahead(h, mid)
        h.core.on_shard_items(0, [ipc.Started(mid)])
        await asyncio.sleep(0.3)
        assert "interrupt" not in h.log.kinds(), "a running message was interrupted"
        assert "undispatch" not in h.log.kinds()
        assert second == [], f"its waiter was told: {second}"

    asyncio.run(body())
