"""The single-node core against a real Redis and a real `aqnode serve` (SPEC 3, 4, 5, 6)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import redis

from aqnode.client import Client
from aqnode.errors import AqError, HandlerError
from tests.handlers.testkit import (
    NODE_ID,
    BlockingWork,
    Counted,
    Fail,
    Forward,
    Get,
    Incr,
    OwnState,
    Sleep,
    Token,
    WaitOnSelf,
    WhoRuns,
)
from tests.node_fixture import Node, node_env
from tests.redis_fixture import wait_for


def test_single_writer_keeps_every_update_and_each_senders_order(
    fresh: Node, redis_client: redis.Redis
) -> None:
    """Given 6 senders hammering 10 counters with read-modify-write handlers that await
    between read and write, when all is sent, then no update is lost and every counter saw
    each sender's messages in the order that sender enqueued them."""
    senders, counters, per_counter = 6, 10, 15

    async def sender(name: str) -> None:
        async with Client(fresh.address) as bus:
            sends = [
                bus.enqueue(Incr(name=f"c{c}", sender=name, seq=i))
                for i in range(per_counter)
                for c in range(counters)
            ]
            await asyncio.gather(*sends)  # pipelined: all in flight on one ordered stream

    async def main() -> None:
        await asyncio.gather(*(sender(f"s{s}") for s in range(senders)))

    asyncio.run(main())
    total = senders * per_counter
    wait_for(
        lambda: all(
            int(redis_client.get(f"t:counter:c{c}") or 0) == total for c in range(counters)
        ),
        timeout=60,
        message="not every increment was applied",
    )
    for c in range(counters):
        for s in range(senders):
            seen = [int(x) for x in redis_client.lrange(f"t:order:c{c}:s{s}", 0, -1)]
            assert seen == list(range(per_counter)), f"c{c} saw s{s} out of order: {seen}"


def test_entities_run_concurrently(fresh: Node) -> None:
    """100 entities whose handlers sleep 50 ms finish far sooner than 100 x 50 ms."""

    async def main() -> float:
        async with Client(fresh.address) as bus:
            start = time.monotonic()
            await asyncio.gather(
                *(bus.enqueue_and_wait(Sleep(name=f"e{i}", ms=50)) for i in range(100))
            )
            return time.monotonic() - start

    took = asyncio.run(main())
    assert took < 2.5, f"100 x 50 ms took {took:.2f}s: entities did not interleave"


def test_two_shards_share_the_load_and_an_entity_stays_on_its_shard(
    fresh: Node, redis_client: redis.Redis
) -> None:
    with fresh.client() as bus:
        pids = {bus.enqueue_and_wait(WhoRuns(name=f"w{i}")) for i in range(40)}
        same = {bus.enqueue_and_wait(WhoRuns(name="sticky")) for _ in range(20)}
    assert pids == set(fresh.shard_pids()), "both shards should run handlers"
    assert len(same) == 1, "one entity must always land on the same shard"


def test_typed_round_trip_and_for_entity(fresh: Node) -> None:
    with fresh.client() as bus:
        first = bus.enqueue_and_wait(Incr(name="typed", by=5))
        assert first == Counted(name="typed", value=5)
        assert isinstance(first, Counted)
        acct = bus.for_entity("counter", "typed")
        acct.enqueue(Incr(name="typed", by=2))
        assert acct.enqueue_and_wait(Get(name="typed")) == 7  # queries see earlier commands
        with pytest.raises(ValueError, match="not counter:typed"):
            acct.enqueue(Incr(name="other"))


def test_raw_sends_json_and_msgpack(fresh: Node) -> None:
    with fresh.client() as bus:
        mid = bus.enqueue_raw("counter", "Incr", "raw", {"name": "raw", "by": 3})
        assert isinstance(mid, str) and mid
        reply = bus.enqueue_and_wait_raw("counter", "Incr", "raw", {"name": "raw"}, timeout=5)
        assert reply == {"name": "raw", "value": 4}
        json_reply = bus.enqueue_and_wait_raw(
            "counter", "Get", "raw", b'{"name": "raw"}', content_type="application/json"
        )
        assert json_reply == 4


def test_enqueue_many_returns_ids_in_order(fresh: Node, redis_client: redis.Redis) -> None:
    with fresh.client() as bus:
        ids = bus.enqueue_many([Incr(name="many", sender="m", seq=i) for i in range(50)])
        assert len(ids) == 50 and len(set(ids)) == 50
        assert bus.enqueue_and_wait(Get(name="many")) == 50
    assert [int(x) for x in redis_client.lrange("t:order:many:m", 0, -1)] == list(range(50))


def test_handler_error_carries_type_message_and_traceback(fresh: Node) -> None:
    with fresh.client() as bus, pytest.raises(HandlerError) as caught:
        bus.enqueue_and_wait(Fail(name="f", text="boom 42"))
    err = caught.value
    assert err.code == "HANDLER_ERROR"
    assert err.remote_type == "ValueError"
    assert err.remote_message == "boom 42"
    assert "raise ValueError(msg.text)" in err.remote_traceback


def test_reply_timeout_leaves_the_message_to_run(fresh: Node, redis_client: redis.Redis) -> None:
    with fresh.client() as bus:
        started = time.monotonic()
        with pytest.raises(AqError) as caught:
            bus.enqueue_and_wait(Sleep(name="slow", ms=800), timeout=0.2)
        assert caught.value.code == "REPLY_TIMEOUT"
        assert time.monotonic() - started < 0.8 + 2.0
    wait_for(
        lambda: any(x.startswith(b"slow:") for x in redis_client.lrange("t:slept", 0, -1)),
        message="the timed-out message never ran",
    )


def _keys(redis_client: redis.Redis) -> set[bytes]:
    return {k for k in redis_client.keys("*") if not k.startswith(b"t:")}


@pytest.mark.parametrize(
    ("entity_type", "message", "entity_id", "data", "code", "mentions"),
    [
        ("nope", "Incr", "x", {"name": "x"}, "UNKNOWN_ENTITY_TYPE", "nope"),
        ("counter", "Nope", "x", {"name": "x"}, "UNKNOWN_MESSAGE", "Nope"),
        ("counter", "Incr", "x", {"name": "x", "by": "lots"}, "INVALID_PAYLOAD", "by"),
        ("counter", "Sleep", "x", {"name": "x"}, "INVALID_PAYLOAD", "ms"),
        ("counter", "Incr", "x", {"name": "y"}, "INVALID_PAYLOAD", "name"),
    ],
)
def test_validation_errors_write_nothing(
    fresh: Node,
    redis_client: redis.Redis,
    entity_type: str,
    message: str,
    entity_id: str,
    data: dict[str, object],
    code: str,
    mentions: str,
) -> None:
    with fresh.client() as bus:
        bus.enqueue_and_wait(Get(name="warm"))  # scripts loaded, counters exist
        before = _keys(redis_client)
        for wait in (False, True):
            with pytest.raises(AqError) as caught:
                if wait:
                    bus.enqueue_and_wait_raw(entity_type, message, entity_id, data)
                else:
                    bus.enqueue_raw(entity_type, message, entity_id, data)
            assert caught.value.code == code
            assert mentions in caught.value.message
    assert _keys(redis_client) == before, "a rejected message must leave nothing in Redis"


def test_log_holds_enqueued_before_enqueue_returns_and_dispatched_while_running(
    fresh: Node, redis_client: redis.Redis
) -> None:
    with fresh.client() as bus:
        bus.enqueue(Sleep(name="gate", ms=1500))  # holds the entity's worker
        queued = bus.enqueue(Incr(name="gate"))
        state = redis_client.hget(f"aq:{{{NODE_ID}}}:m:{queued}", "state")
        assert state == b"enqueued", "enqueue returned before its entry was durable"
        assert bus.enqueue_and_wait(OwnState(name="own")) == "dispatched"
        wait_for(
            lambda: redis_client.hget(f"aq:{{{NODE_ID}}}:m:{queued}", "state") == b"completed",
            message="the queued message never completed",
        )


def test_a_handler_waiting_on_its_own_entity_gets_self_wait(fresh: Node) -> None:
    with fresh.client() as bus:
        assert bus.enqueue_and_wait(WaitOnSelf(name="me")) == "SELF_WAIT"


def test_a_handler_can_wait_on_another_entity(fresh: Node) -> None:
    with fresh.client() as bus:
        assert bus.enqueue_and_wait(Forward(name="a", to="b")) == 1
        assert bus.enqueue_and_wait(Forward(name="a", to="b")) == 2


def test_the_fencing_token_of_a_standalone_node_is_zero(fresh: Node) -> None:
    """One node: an entity never changes owner (cluster mode gives growing tokens)."""
    with fresh.client() as bus:
        assert bus.enqueue_and_wait(Token(name="t")) == 0


def test_sync_handlers_run_in_threads_without_stalling_others(fresh: Node) -> None:
    """Four blocking handlers (1 s each, two per shard at least on one shard) all start
    before any of them ends: a plain def runs in a thread, not on the shard's loop."""

    async def main() -> list[float]:
        async with Client(fresh.address) as bus:
            return list(
                await asyncio.gather(
                    *(bus.enqueue_and_wait(BlockingWork(name=f"b{i}", ms=1000)) for i in range(4))
                )
            )

    starts = asyncio.run(main())
    assert max(starts) - min(starts) < 1.0, f"a blocking handler waited for another: {starts}"


def test_idle_workers_are_torn_down(fresh: Node) -> None:
    with fresh.client() as bus:
        bus.enqueue_many([Incr(name=f"idle{i}") for i in range(20)])
        bus.enqueue_and_wait(Get(name="idle19"))
    wait_for(
        lambda: sum(s.workers for s in fresh.status().shards) == 0,
        message="idle workers were not torn down after worker_idle_timeout_ms",
    )
    assert fresh.status().live_messages == 0


def test_cli_enqueue_and_wait_prints_json(fresh: Node) -> None:
    base = [sys.executable, "-m", "aqnode", "enqueue", "--address", fresh.address]
    sent = subprocess.run(
        [*base, "counter", "Incr", "cli", "--data", '{"name": "cli", "by": 2}'],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip()
    waited = subprocess.run(
        [*base, "counter", "Get", "cli", "--data", '{"name": "cli"}', "--wait"],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=30,
    )
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == 2
    bad = subprocess.run(
        [*base, "counter", "Incr", "cli", "--data", '{"name": "cli", "by": "x"}'],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=30,
    )
    assert bad.returncode == 1
    assert "INVALID_PAYLOAD" in bad.stderr and "by" in bad.stderr


def test_invalid_payload_names_the_field_in_the_error_details(fresh: Node) -> None:
    with fresh.client() as bus, pytest.raises(AqError) as caught:
        bus.enqueue_raw("counter", "Incr", "x", {"name": "x", "by": "lots"})
    assert caught.value.details.get("field") == "by"


def test_enqueue_many_takes_idempotency_keys(fresh: Node, redis_client: redis.Redis) -> None:
    with fresh.client() as bus:
        keys = [f"batch-{i}" for i in range(5)]
        assert bus.enqueue_many([Incr(name="mk") for _ in keys], message_ids=keys) == keys
        assert bus.enqueue_many([Incr(name="mk") for _ in keys], message_ids=keys) == keys
        assert bus.enqueue_and_wait(Get(name="mk")) == 5
