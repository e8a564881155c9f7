"""The log's typed outcomes, read from the replies its Lua scripts give (see lua/*.lua)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import redis.exceptions as redis_exc

from aqnode import errors
from aqnode.wal import Applied, Failed, LogKeys, Outcome, Refused, WriteAheadLog
from aqnode.wal.log import MAX_SCRIPT_BATCH, _Request, outcome_of


def test_a_script_that_moved_the_entry_answers_1_which_reads_as_applied() -> None:
    for kind in ("dispatch", "undispatch", "retry", "finish"):
        assert outcome_of(kind, [1], 0) == Applied()


def test_an_enqueue_keeps_the_new_entrys_sequence_number() -> None:
    assert outcome_of("enqueue", [41, 42], 1) == Applied(seq=42)


def test_a_state_in_the_reply_is_a_refusal_naming_that_state() -> None:
    assert outcome_of("dispatch", [b"dispatched"], 0) == Refused("dispatched")
    assert outcome_of("enqueue", [b"completed"], 0) == Refused("completed")
    assert outcome_of("finish", [b"missing"], 0) == Refused("missing")


def test_an_interrupt_names_where_it_sent_the_entry_and_refuses_anything_else() -> None:
    assert outcome_of("interrupt", [b"enqueued"], 0) == Applied(to="enqueued")
    assert outcome_of("interrupt", [b"interrupted"], 0) == Applied(to="interrupted")
    assert outcome_of("interrupt", [b"completed"], 0) == Refused("completed")


def test_a_script_error_reply_fails_the_item_as_redis_unavailable() -> None:
    outcome = outcome_of("dispatch", redis_exc.ResponseError("MISCONF no disk"), 3)
    assert isinstance(outcome, Failed)
    assert outcome.error.code == errors.REDIS_UNAVAILABLE and "MISCONF" in outcome.error.message


def _log() -> WriteAheadLog:
    client: Any = SimpleNamespace(connection_pool=None)  # never asked: nothing is sent
    return WriteAheadLog(client, LogKeys("aq", "n1"), entry_ttl_s=60, clock=time.time)


def test_each_item_gets_the_outcome_of_its_own_chunk() -> None:
    got: list[Outcome] = []
    ids = [f"m{i}" for i in range(MAX_SCRIPT_BATCH + 2)]
    first_chunk = [1] * MAX_SCRIPT_BATCH
    replies = [first_chunk, redis_exc.ResponseError("OOM")]
    _log()._deliver(_Request("dispatch", ids, got.extend), replies, 0, 0)
    assert got[:MAX_SCRIPT_BATCH] == [Applied()] * MAX_SCRIPT_BATCH
    assert [type(o) for o in got[MAX_SCRIPT_BATCH:]] == [Failed, Failed]


def test_a_commit_without_replies_fails_every_item_of_every_request() -> None:
    dispatched: list[Outcome] = []
    undispatched: list[Outcome] = []
    requests = [
        _Request("dispatch", ["a", "b"], dispatched.extend),
        _Request("undispatch", ["c"], undispatched.extend),
    ]
    _log()._failed([(r, 0, 0) for r in requests], ConnectionError("reset"))
    assert [len(dispatched), len(undispatched)] == [2, 1]
    for outcome in dispatched + undispatched:
        assert isinstance(outcome, Failed) and outcome.error.code == errors.REDIS_UNAVAILABLE
