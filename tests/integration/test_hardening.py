"""Issue 7's bugs, each shown with real processes and real faults: a stalled shard
interrupts only what it started, serving shards killed from outside never halt the
node, and a frozen Redis answers calls in flight as soon as the node gives it up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from aqnode.client import Client
from aqnode.errors import AqError, HandlerError
from aqnode.wal.dlq import DeadLetterQueue
from tests.handlers.testkit import BlockLoop, Fail, Get, Incr, Sleep
from tests.node_fixture import node_env, running_node
from tests.redis_fixture import RedisServer, async_wait_for, free_port, wait_for


def test_a_stalled_shard_interrupts_only_the_message_that_started(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Bug: messages for other entities sent to a stalled shard, which never started,
    were dead-lettered `interrupted` with the one that blocked it."""
    with running_node(tmp_path, redis_url, shards=1, shard_stall_timeout_ms=1000) as node:

        async def main() -> tuple[BaseException | None, list[object]]:
            async with Client(node.address) as bus:
                stuck = asyncio.ensure_future(
                    bus.enqueue_and_wait(BlockLoop(name="stuck", seconds=60), timeout=30)
                )
                await async_wait_for(
                    lambda: redis_client.exists("t:blocking:stuck") == 1, timeout=20
                )
                # Given messages for other entities on the same, now stalled, shard
                others = [
                    bus.enqueue_and_wait(Incr(name=f"other-{i}"), timeout=30) for i in range(10)
                ]
                results = await asyncio.gather(stuck, *others, return_exceptions=True)
                first = results[0] if isinstance(results[0], BaseException) else None
                return first, list(results[1:])

        error, others = asyncio.run(main())
        # Then only the one that started is interrupted; the others ran once, in order
        assert isinstance(error, AqError) and error.code == "INTERRUPTED", error
        assert [getattr(r, "value", r) for r in others] == [1] * 10
        letters = DeadLetterQueue(redis_client, "aq").entries()
        assert [(d.message, d.reason) for d in letters] == [("BlockLoop", "interrupted")]


def test_serving_shards_killed_from_outside_are_restarted_however_often(
    tmp_path: Path, redis_url: str
) -> None:
    """Bug: five kills of a serving shard within 10 s of its start halted the node."""
    with running_node(tmp_path, redis_url, shards=1) as node:
        for kill in range(7):
            (pid,) = node.shard_pids()
            os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda pid=pid: _serving_with_a_new_shard(node, pid),
                timeout=30,
                message=f"no new shard after kill {kill + 1}:\n{node.log()}",
            )
        assert node.proc.poll() is None, node.log()
        with node.client() as bus:
            assert bus.enqueue_and_wait(Incr(name="after-kills")).value == 1
        assert "stopping the node" not in node.log()


def _serving_with_a_new_shard(node: object, old_pid: int) -> bool:
    try:
        status = node.status()  # type: ignore[attr-defined]
    except AqError:
        return False
    return all(s.alive and s.pid != old_pid for s in status.shards)


def test_a_frozen_redis_answers_calls_in_flight_once_the_node_gives_it_up(
    tmp_path: Path,
) -> None:
    """Bug: with Redis stopped but its connection open, calls in flight waited for the
    hard-coded 5 s socket time-out although the health check had flipped in ~1.5 s."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis_cfg = {
            "url": server.url,
            "socket_timeout_ms": 120000,  # far longer than the test may take
            "health_check_ms": 200,
            "health_failure_threshold": 2,
        }
        env = {"AQ_TEST_REDIS_URL": server.url}
        with running_node(tmp_path / "node", None, env, redis=redis_cfg) as node:

            async def main() -> tuple[list[object], float]:
                async with Client(node.address) as bus:
                    await bus.enqueue_and_wait(Incr(name="warm"), timeout=10)
                    server.freeze()  # SIGSTOP: the connection stays open, nothing answers
                    started = time.monotonic()
                    calls = [bus.enqueue(Incr(name=f"f-{i}")) for i in range(5)]
                    results = await asyncio.wait_for(
                        asyncio.gather(*calls, return_exceptions=True), 60
                    )
                    return list(results), time.monotonic() - started

            results, took = asyncio.run(main())
            codes = {r.code for r in results if isinstance(r, AqError)}
            assert codes == {"REDIS_UNAVAILABLE"}, results
            assert all(isinstance(r, AqError) for r in results), results
            # Each refusal carries the id to resend under when the write may have landed
            assert all(
                "message_id=" in r.message or "nothing was written" in r.message
                for r in results
                if isinstance(r, AqError)
            ), results
            assert took < 60
            server.thaw()
            wait_for(lambda: _accepts(node), timeout=30, message=node.log())
    finally:
        if server.is_running():
            server.thaw()
        server.close()


def _accepts(node: object) -> bool:
    try:
        with node.client() as bus:  # type: ignore[attr-defined]
            bus.enqueue(Incr(name="back"))
        return True
    except AqError:
        return False


def test_dead_letters_show_in_the_log_and_as_a_metric(tmp_path: Path, redis_url: str) -> None:
    """Bug: handler errors and dead letters never appeared in the node's log, and no
    metric counted the dead letters waiting."""
    port = free_port()
    with running_node(
        tmp_path,
        redis_url,
        metrics_listen=f"127.0.0.1:{port}",
        wal={"cleanup_interval_ms": 100},
    ) as node:
        with node.client() as bus, pytest.raises(HandlerError):
            bus.enqueue_and_wait(Fail(name="dl", text="broken on purpose"))
        wait_for(lambda: "dead-lettered (exhausted)" in node.log(), timeout=10, message=node.log())
        assert "broken on purpose" in node.log()
        wait_for(
            lambda: "aqnode_dead_letters 1" in _get(f"http://127.0.0.1:{port}/metrics"),
            timeout=10,
        )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_a_second_signal_during_a_drain_stops_the_node_at_once(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Bug: a second Ctrl-C during a drain was silently ignored."""
    with running_node(tmp_path, redis_url, drain_timeout_ms=120000) as node:
        with node.client() as bus:
            bus.enqueue(Sleep(name="long", ms=600000))
        wait_for(lambda: node.status().live_messages == 1, timeout=10)
        node.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in node.log(), timeout=10)
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait_exit(30) == 0
        assert "SIGTERM again: stopping now" in node.log()
        assert node.log().rstrip().endswith("stopped"), node.log()[-500:]


def test_the_entity_id_field_may_come_from_the_address(tmp_path: Path, redis_url: str) -> None:
    """Bug: the CLI needed the entity id twice, as an argument and inside --data."""
    with running_node(tmp_path, redis_url) as node:
        env = node_env(redis_url)
        base = [sys.executable, "-m", "aqnode", "enqueue", "--address", node.address]
        sent = subprocess.run(
            [*base, "counter", "Incr", "from-address", "--wait"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["value"] == 1
        clash = subprocess.run(
            [*base, "counter", "Incr", "a", "--data", '{"name": "b"}'],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert clash.returncode == 1 and "INVALID_PAYLOAD" in clash.stderr, clash.stderr


def test_a_payload_too_large_for_one_call_is_refused_with_its_code() -> None:
    """Bug: a 100 MB send was reported as "is `aqnode serve` running there?"."""
    from aqnode.client import SyncClient

    with SyncClient(f"127.0.0.1:{free_port()}") as bus, pytest.raises(AqError) as caught:
        bus.enqueue_raw("counter", "Incr", "big", b"x" * (100 * 1024 * 1024))
    assert caught.value.code == "PAYLOAD_TOO_LARGE", caught.value


def test_a_drain_that_times_out_dead_letters_only_what_started(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Found in review: a stopping node skipped the shard-death bookkeeping, so a message
    handed to a shard (`dispatched`) but never started was dead-lettered at the next
    start. It must stay queued and run then."""
    with running_node(tmp_path, redis_url, shards=1, drain_timeout_ms=300) as node:
        with node.client() as bus:
            bus.enqueue(BlockLoop(name="stuck", seconds=60))
            wait_for(lambda: redis_client.exists("t:blocking:stuck") == 1, timeout=20)
            # An idle entity's message goes out `dispatched`; the blocked loop never starts it
            waiting = bus.enqueue(Incr(name="behind"))
        assert node.terminate(60) == 0
        letters = DeadLetterQueue(redis_client, "aq").entries()
        assert [(d.message, d.reason) for d in letters] == [("BlockLoop", "interrupted")]
        entry = redis_client.hget(f"aq:{{test-node}}:m:{waiting}", "state")
        assert entry == b"enqueued", entry
        node.respawn()
        with node.client() as bus:
            assert bus.enqueue_and_wait(Get(name="behind")) == 1  # it ran once, in order
