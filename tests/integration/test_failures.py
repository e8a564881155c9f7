"""Strictly once, fail if interrupted: retries, crashes, dead letters, idempotency,
backpressure, recovery, draining and cleanup, with real faults (SPEC 5, 6, 7)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from aqnode.client import Client
from aqnode.errors import AqError, HandlerError
from aqnode.wal.dlq import DeadLetterQueue
from tests.handlers.testkit import NODE_ID, BlockLoop, Crash, Flaky, Get, Incr, Sleep
from tests.node_fixture import running_node
from tests.redis_fixture import RedisServer, wait_for

ENTRY = f"aq:{{{NODE_ID}}}:m:"


def dead_letters(redis_client: redis.Redis) -> dict[str, object]:
    return {d.id: d for d in DeadLetterQueue(redis_client, "aq").entries()}


def log_keys(redis_client: redis.Redis) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{ENTRY}*"))


def test_retries_run_head_of_line_then_exhausted_messages_are_dead_lettered(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    retry = {"max_attempts": 3, "backoff": "fixed", "backoff_delay_ms": 50}
    with running_node(tmp_path, redis_url, entities={"counter": {"retry": retry}}) as node:
        with node.client() as bus:
            # Given a message that fails twice, then one behind it on the same entity
            first = bus.enqueue(Flaky(name="r", fail_times=2, seq=1))
            bus.enqueue(Flaky(name="r", fail_times=0, seq=2))
            # When the second's reply comes, the first has run all its attempts before it
            assert bus.enqueue_and_wait(Flaky(name="r", fail_times=0, seq=3)) == 1
            attempts = [x.decode() for x in redis_client.lrange("t:attempts:r", 0, -1)]
            assert attempts == ["1:1", "1:2", "1:3", "2:1", "3:1"]
            assert redis_client.hget(ENTRY + first, "state") == b"completed"
            # And a message that never succeeds is dead-lettered as exhausted
            with pytest.raises(HandlerError) as caught:
                bus.enqueue_and_wait(Flaky(name="x", fail_times=9))
            assert caught.value.remote_message == "attempt 3 fails on purpose"
        letters = dead_letters(redis_client)
        assert len(letters) == 1
        (letter,) = letters.values()
        assert letter.reason == "exhausted" and letter.attempts == 3  # type: ignore[attr-defined]
        assert "fails on purpose" in letter.error["remote_traceback"]  # type: ignore[attr-defined]


def test_a_crash_mid_handler_interrupts_only_that_message(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url) as node:

        async def main() -> tuple[BaseException | None, list[int]]:
            async with Client(node.address) as bus:
                crashed = bus.enqueue_and_wait(Crash(name="boom"), timeout=20)
                behind = [bus.enqueue_and_wait(Incr(name="boom"), timeout=20) for _ in range(3)]
                results = await asyncio.gather(crashed, *behind, return_exceptions=True)
                error = results[0] if isinstance(results[0], BaseException) else None
                return error, [r.value for r in results[1:]]  # type: ignore[union-attr]

        error, values = asyncio.run(main())
        # The waiter was told, the messages behind it ran in order after the restart
        assert isinstance(error, AqError) and error.code == "INTERRUPTED", error
        assert values == [1, 2, 3]
        assert redis_client.llen("t:crash:boom") == 1, "an interrupted message ran twice"
        (letter,) = dead_letters(redis_client).values()
        assert letter.reason == "interrupted"  # type: ignore[attr-defined]
        assert letter.message == "Crash"  # type: ignore[attr-defined]


def test_on_interrupt_retry_runs_the_message_again(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url, entities={"counter": {"on_interrupt": "retry"}}) as node:
        with node.client() as bus:
            assert bus.enqueue_and_wait(Crash(name="again", once=True), timeout=20) is None
        assert [int(x) for x in redis_client.lrange("t:crash:again", 0, -1)] == [1, 2]
        assert dead_letters(redis_client) == {}


def test_the_same_message_id_from_many_clients_runs_once(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url) as node:

        async def sender() -> list[str]:
            async with Client(node.address) as bus:
                return list(
                    await asyncio.gather(
                        *(bus.enqueue(Incr(name="idem"), message_id="pay-1") for _ in range(20))
                    )
                )

        async def main() -> list[list[str]]:
            return list(await asyncio.gather(*(sender() for _ in range(5))))

        ids = {i for batch in asyncio.run(main()) for i in batch}
        assert ids == {"pay-1"}
        with node.client() as bus:
            # A wait on the known id returns that one run's result; it does not run again.
            assert bus.enqueue_and_wait(Incr(name="idem"), message_id="pay-1").value == 1
            assert bus.enqueue_and_wait(Get(name="idem")) == 1
        assert redis_client.lrange("t:ran", 0, -1).count(b"pay-1") == 1


def test_backpressure_limits_reject_before_writing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    overrides = {
        "max_total_workers": 3,
        "max_total_queue_depth": 6,
        "entities": {"counter": {"worker_max_queue_depth": 2}},
    }
    with running_node(tmp_path, redis_url, **overrides) as node, node.client() as bus:
        bus.enqueue(Sleep(name="a", ms=3000))  # running
        bus.enqueue(Incr(name="a"))  # waiting 1
        bus.enqueue(Incr(name="a"))  # waiting 2
        before = set(log_keys(redis_client))
        with pytest.raises(AqError) as per_entity:
            bus.enqueue(Incr(name="a"))
        assert per_entity.value.code == "QUEUE_DEPTH_EXCEEDED"
        bus.enqueue(Sleep(name="b", ms=3000))
        bus.enqueue(Sleep(name="c", ms=3000))
        with pytest.raises(AqError) as workers:
            bus.enqueue(Incr(name="d"))
        assert workers.value.code == "WORKER_LIMIT_EXCEEDED"
        bus.enqueue(Incr(name="b"))  # an entity with a worker is still accepted
        with pytest.raises(AqError) as total:
            bus.enqueue(Incr(name="c"))
        assert total.value.code == "QUEUE_DEPTH_EXCEEDED"
        assert "max_total_queue_depth" in total.value.message
        added = set(log_keys(redis_client)) - before
        assert len(added) == 3, "only the accepted messages may be written"


def test_recovery_runs_enqueued_entries_in_order_and_dead_letters_dispatched_ones(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url) as node:
        with node.client() as bus:
            running = bus.enqueue(Sleep(name="rec", ms=5000))
            queued = [bus.enqueue(Flaky(name="rec", fail_times=0, seq=i)) for i in range(5)]
        wait_for(lambda: redis_client.hget(ENTRY + running, "state") == b"dispatched")
        # When the whole node dies with one message running and five queued
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(5)
        assert all(redis_client.hget(ENTRY + q, "state") == b"enqueued" for q in queued)
        # Then a restart with the same config runs the queued ones, in order, and
        # dead-letters the one that may have been running
        node.respawn()
        wait_for(
            lambda: all(redis_client.hget(ENTRY + q, "state") == b"completed" for q in queued),
            message="recovered messages did not run",
        )
        assert [x.decode() for x in redis_client.lrange("t:attempts:rec", 0, -1)] == [
            f"{i}:1" for i in range(5)
        ]
        letters = dead_letters(redis_client)
        assert list(letters) == [running]
        assert letters[running].reason == "interrupted"  # type: ignore[attr-defined]
        assert redis_client.lrange("t:slept", 0, -1) == []


def test_redis_outage_fails_fast_and_work_resumes_by_itself(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, redis_client: redis.Redis
) -> None:
    overrides = {"redis": {"health_check_ms": 100}}
    with running_node(tmp_path, redis_url, **overrides) as node, node.client() as bus:
        bus.enqueue_and_wait(Incr(name="out"))
        redis_server.stop(persist=True)
        started = time.monotonic()
        with pytest.raises(AqError) as caught:
            bus.enqueue(Incr(name="out"))
        assert caught.value.code == "REDIS_UNAVAILABLE"
        assert time.monotonic() - started < 3.0
        wait_for(lambda: _rejects(bus, "REDIS_UNAVAILABLE"), message="no fast rejection")
        redis_server.start()
        value = wait_for(lambda: _accepts(bus), timeout=15, message="no recovery")
        assert value == 2


def _rejects(bus: object, code: str) -> bool:
    started = time.monotonic()
    try:
        bus.enqueue(Incr(name="out-probe"))  # type: ignore[attr-defined]
    except AqError as exc:
        return exc.code == code and time.monotonic() - started < 0.5
    return False


def _accepts(bus: object) -> int | None:
    try:
        return bus.enqueue_and_wait(Incr(name="out"), timeout=5).value  # type: ignore[attr-defined, no-any-return]
    except AqError:
        return None


def test_sigterm_drains_running_handlers_and_keeps_queued_messages(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url, drain_timeout_ms=5000) as node:
        with node.client() as bus:
            running = bus.enqueue(Sleep(name="dr", ms=700))
            queued = [bus.enqueue(Incr(name="dr")) for _ in range(3)]
            wait_for(lambda: redis_client.hget(ENTRY + running, "state") == b"dispatched")
            node.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: _rejects_draining(bus), timeout=5, message="no DRAINING")
        assert node.wait_exit(20) == 0
        assert redis_client.hget(ENTRY + running, "state") == b"completed"
        assert all(redis_client.hget(ENTRY + q, "state") == b"enqueued" for q in queued)
        node.respawn()
        wait_for(lambda: all(redis_client.hget(ENTRY + q, "state") == b"completed" for q in queued))
        assert int(redis_client.get("t:counter:dr") or 0) == 3


def _rejects_draining(bus: object) -> bool:
    try:
        bus.enqueue(Incr(name="late"))  # type: ignore[attr-defined]
    except AqError as exc:
        return exc.code == "DRAINING"
    return False


def test_terminal_entries_are_cleaned_so_the_log_stays_bounded(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    overrides = {"wal": {"cleanup_interval_ms": 100, "idempotency_window_s": 1}}
    with running_node(tmp_path, redis_url, **overrides) as node, node.client() as bus:
        for round_ in range(3):
            bus.enqueue_many([Incr(name=f"cl{i}") for i in range(200)])
            bus.enqueue_and_wait(Get(name="cl199"))
            assert len(log_keys(redis_client)) >= 200 * (round_ > 0 or 1)
            wait_for(
                lambda: len(log_keys(redis_client)) == 0,
                timeout=10,
                message="terminal entries were not cleaned",
            )
        for key in redis_client.scan_iter(match="aq:*"):
            assert redis_client.ttl(key) != -1 or not key.startswith(ENTRY.encode())


def test_a_shard_whose_loop_is_blocked_is_killed_and_its_message_interrupted(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url, shard_stall_timeout_ms=1000) as node:
        with node.client() as bus:
            with pytest.raises(AqError) as caught:
                bus.enqueue_and_wait(BlockLoop(name="stuck", seconds=30), timeout=20)
            assert caught.value.code == "INTERRUPTED"
            assert bus.enqueue_and_wait(Incr(name="stuck")).value == 1
        assert "sent no heartbeat" in node.log()
        (letter,) = dead_letters(redis_client).values()
        assert letter.reason == "interrupted"  # type: ignore[attr-defined]
