"""SyncClient's blocking path (aqnode/client/blocking.py): a call goes from the calling
thread over a native socket of its own, no hop to the background loop, and keeps every
guarantee of the loop's path: FIFO per sender (also with many threads at once), typed
replies and errors, idempotency keys; a node restarted between two calls costs no
spurious error; a client pinned to gRPC, or an entity with a call in flight on the loop,
goes the usual way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aqnode.client import SyncClient
from aqnode.errors import AqError, HandlerError
from tests.handlers.testkit import Fail, Incr, Sleep
from tests.node_fixture import Node, running_node
from tests.redis_fixture import wait_for


@pytest.fixture(scope="module")
def node(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    redis_server.ensure_running()
    with running_node(tmp_path_factory.mktemp("direct"), redis_server.url) as node:
        yield node


def direct_client(node: Node, **options: Any) -> SyncClient:
    """A SyncClient given the gRPC address, once it found the node's native socket."""
    client = SyncClient(node.address, **options)
    wait_for(lambda: client.enqueue_and_wait(Incr(name="warm")) and _direct_opened(client), 10)
    return client


def _direct_opened(client: SyncClient) -> bool:
    return bool(client._threads._all)


def test_calls_go_from_the_callers_thread_and_keep_every_guarantee(
    node: Node, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    with direct_client(node) as client:
        ids = [client.enqueue(Incr(name="d-fifo", sender="s", seq=i)) for i in range(200)]
        assert len(set(ids)) == 200
        wait_for(lambda: r.llen("t:order:d-fifo:s") == 200, timeout=20)
        assert [int(x) for x in r.lrange("t:order:d-fifo:s", 0, -1)] == list(range(200))
        first = client.enqueue_and_wait(Incr(name="d-idem"), message_id="d-once")
        again = client.enqueue_and_wait(Incr(name="d-idem"), message_id="d-once")
        assert first.value == again.value == 1
        assert r.lrange("t:ran", 0, -1).count(b"d-once") == 1
        with pytest.raises(HandlerError) as failed:
            client.enqueue_and_wait(Fail(name="d", text="boom"))
        assert "boom" in failed.value.remote_message
        with pytest.raises(AqError) as late:
            client.enqueue_and_wait(Sleep(name="d-slow", ms=1500), timeout=0.2)
        assert late.value.code == "REPLY_TIMEOUT"
        assert client.enqueue_and_wait(Incr(name="d-after")).value == 1  # the socket goes on
        assert len(client._threads._all) == 1  # one thread, one socket: all went direct


def test_many_threads_each_keep_their_order(node: Node, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    with direct_client(node) as client:
        errors: list[BaseException] = []

        def sender(t: int) -> None:
            try:
                for i in range(100):
                    client.enqueue(Incr(name="d-threads", sender=f"t{t}", seq=i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        for t in range(8):
            key = f"t:order:d-threads:t{t}"
            wait_for(lambda key=key: r.llen(key) == 100, timeout=20)
            assert [int(x) for x in r.lrange(key, 0, -1)] == list(range(100))
        assert len(client._threads._all) >= 8  # each thread had its own socket


def test_a_node_restarted_between_two_calls_costs_no_error(tmp_path: Path, redis_url: str) -> None:
    with running_node(tmp_path, redis_url) as node, direct_client(node) as client:
        node.terminate()
        node.respawn()
        # The thread's socket is stale; the call notices before writing and goes on
        # (over a new socket or, while the loop finds the node again, the loop's way).
        assert client.enqueue_and_wait(Incr(name="d-restart")).value == 1


def test_grpc_pinned_and_in_flight_entities_go_the_loops_way(node: Node) -> None:
    with SyncClient(node.address, transport="grpc") as pinned:
        for _ in range(20):
            pinned.enqueue_and_wait(Incr(name="d-pinned"))
        assert not _direct_opened(pinned)
    with direct_client(node) as client:
        inner = client._client
        # A call of the entity in flight on the loop: the next one must queue behind it.
        slow = asyncio.run_coroutine_threadsafe(
            inner.enqueue_and_wait(Sleep(name="d-busy", ms=300)), client._loop
        )
        wait_for(lambda: "counter:d-busy" in inner._in_flight, timeout=5)
        from aqnode.bus import envelope_of

        assert inner.native_route(envelope_of(Incr(name="d-busy"))) is None
        assert inner.native_route(envelope_of(Incr(name="d-free"))) is not None
        slow.result(10)
