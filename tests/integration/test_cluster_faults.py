"""The cluster under faults (SPEC 10.1 "Fencing", "A dead node's log is adopted"; issue 9):
one node cut off from Redis by a TCP proxy, or paused with SIGSTOP, for several
node_ttl_ms under load. The node starts no handler once its lease is over, its entities
run elsewhere, it stops when it comes back (it was declared dead), and across the group
no entity ever runs two handlers at once, no message runs twice, each sender's order
holds, and every acknowledged message ran or was dead-lettered `interrupted`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aqnode.client import Client
from aqnode.errors import AqError
from aqnode.wal.dlq import DeadLetterQueue
from tests.handlers.testkit import Span
from tests.integration.test_cluster_membership import CLUSTER, agreed
from tests.integration.test_cluster_placement import IDS, log_store, shard_pids, spread
from tests.node_fixture import Node, running_node
from tests.redis_fixture import wait_for
from tests.tcp_proxy import TcpProxy, tcp_proxy

TTL_S = CLUSTER["node_ttl_ms"] / 1000
ENTITIES = 12
RESENT = ("UNAVAILABLE", "MASTER_REBUILDING", "REDIS_UNAVAILABLE", "DRAINING")


@contextlib.contextmanager
def group_with_proxy(tmp_path: Path, redis_url: str) -> Iterator[tuple[list[Node], TcpProxy]]:
    """n1, n2 on Redis directly; n3 through a proxy the test can cut."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with tcp_proxy(host, int(port)) as proxy, contextlib.ExitStack() as stack:
        nodes = []
        for sid in IDS:
            extra = {"redis": {"url": f"redis://{proxy.address}/0"}} if sid == "n3" else {}
            nodes.append(
                stack.enter_context(
                    running_node(
                        tmp_path / sid, redis_url, server_id=sid, shards=1, cluster=CLUSTER,
                        **extra,
                    )
                )
            )  # fmt: skip
        wait_for(lambda: agreed(nodes, "n1", set(IDS)), timeout=15)
        wait_for(lambda: spread(nodes), timeout=15)
        yield nodes, proxy


async def lane(
    bus: Client, sender: str, entity: str, ms: int, stop: asyncio.Event, acked: list[str]
) -> None:
    """One sender's calls for one entity, in sequence until ``stop``: each resent under
    its own id until acknowledged, so the sender's order is the order acknowledged."""
    for seq in itertools.count():
        if stop.is_set():
            return
        mid = f"{sender}-{entity}-{seq}"
        while True:
            try:
                await bus.enqueue(Span(name=entity, ms=ms, seq=seq, sender=sender), message_id=mid)
                break
            except AqError as exc:
                assert exc.code in RESENT, exc
                await asyncio.sleep(0.05)
        acked.append(mid)
        await asyncio.sleep(0.005)


async def load(
    addresses: list[str], fault: Callable[[], None], heal: Callable[[], None]
) -> tuple[list[str], float, float]:
    """Two senders (one per address), one lane per entity each, every call resent under
    its id until acknowledged; the fault starts after 1 s and lasts 4 x node_ttl_ms."""
    stop = asyncio.Event()
    acked: list[str] = []

    async with contextlib.AsyncExitStack() as stack:
        buses = [await stack.enter_async_context(Client(a, follow_owners=False)) for a in addresses]
        lanes = [
            asyncio.create_task(lane(bus, f"s{i}", f"fault-{e}", 20, stop, acked))
            for i, bus in enumerate(buses)
            for e in range(ENTITIES)
        ]
        await asyncio.sleep(1.0)
        began = time.time()
        fault()
        await asyncio.sleep(4 * TTL_S)
        healed = time.time()
        heal()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*lanes)
    return acked, began, healed


def check(
    r: redis.Redis,
    acked: list[str],
    faulty_pids: set[int] | None = None,
    began: float = 0.0,
    log: Any = None,
) -> None:
    """No duplicate, nothing acknowledged lost, no overlap, FIFO per sender; with
    ``faulty_pids``: the faulty node started nothing past its lease and its entities ran
    elsewhere during the fault that ``began``. ``log``: where the log is, if not in ``r``."""
    interrupted = {
        d.id for d in DeadLetterQueue(log or r, "aq").entries() if d.reason == "interrupted"
    }
    records = []
    for e in range(ENTITIES):
        for raw in r.lrange(f"t:span:fault-{e}", 0, -1):
            start, end, pid, mid, seq, sender = raw.decode().split(":")
            records.append(
                (f"fault-{e}", float(start), float(end), int(pid), mid, int(seq), sender)
            )
    ran = [rec[4] for rec in records]
    assert len(ran) == len(set(ran)), "a message ran twice"
    assert set(acked) <= set(ran) | interrupted, "an acknowledged message was lost"
    for e in range(ENTITIES):
        mine = sorted(rec[1:] for rec in records if rec[0] == f"fault-{e}")
        for before, after in itertools.pairwise(mine):
            assert after[0] >= before[1], f"fault-{e}: two handlers overlapped"
        for sender in ("s0", "s1"):
            seqs = [rec[4] for rec in mine if rec[5] == sender]
            assert seqs == sorted(seqs), f"fault-{e}: {sender} out of order"
    if faulty_pids is None:
        return
    # The cut node starts nothing once its lease is over (ttl less a margin after its
    # last renewal, which came before the fault).
    late = [rec for rec in records if rec[3] in faulty_pids and rec[1] > began + TTL_S]
    assert late == [], f"the cut-off node started handlers: {late[:3]}"
    moved = {rec[0] for rec in records if rec[3] not in faulty_pids and rec[1] > began + TTL_S}
    assert moved, "no entity ran elsewhere during the fault"


@pytest.mark.parametrize("fault", ["partition", "pause"])
def test_a_node_cut_off_or_paused_past_its_lease_starts_nothing_and_stops_when_back(
    tmp_path: Path, redis_url: str, fault: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    with group_with_proxy(tmp_path, redis_url) as (nodes, proxy):
        n3 = nodes[2]
        faulty_pids = shard_pids(n3)

        def cut() -> None:
            if fault == "partition":
                proxy.cut()
            else:
                os.killpg(n3.proc.pid, signal.SIGSTOP)

        def heal() -> None:
            if fault == "partition":
                proxy.restore()
            else:
                os.killpg(n3.proc.pid, signal.SIGCONT)

        acked, began, _healed = asyncio.run(load([n.address for n in nodes[:2]], cut, heal))
        # Declared dead and adopted: when it can reach Redis again it stops, saying why.
        assert n3.wait_exit(30) == 1
        assert "declared this node dead" in n3.log_path.read_text()
        wait_for(
            lambda: sum(r.llen(f"t:span:fault-{e}") for e in range(ENTITIES)) >= len(acked) - 20,
            timeout=30,
        )
        time.sleep(0)  # the checks read what the handlers recorded
        wait_for(lambda: _settled(r, acked), timeout=30)
        check(r, acked, faulty_pids, began)


def _settled(r: redis.Redis, acked: list[str], log: Any = None) -> bool:
    ran = set()
    for e in range(ENTITIES):
        ran |= {raw.decode().split(":")[3] for raw in r.lrange(f"t:span:fault-{e}", 0, -1)}
    letters = DeadLetterQueue(log or r, "aq").entries()
    interrupted = {d.id for d in letters if d.reason == "interrupted"}
    return set(acked) <= ran | interrupted


def test_a_rolling_restart_under_load_loses_nothing_and_keeps_order(
    tmp_path: Path, redis_url: str, log_url: str | None
) -> None:
    """Every node is stopped (SIGTERM) and started again, one after the other, while two
    senders (clients given all three addresses, routing to owners) keep sending; the
    group's log on the test's Redis or on a Redis Cluster."""
    r = redis.Redis.from_url(redis_url)
    log = {"redis": {"url": log_url}} if log_url else {}
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                running_node(
                    tmp_path / sid, redis_url, server_id=sid, shards=1, cluster=CLUSTER, **log
                )
            )
            for sid in IDS
        ]
        wait_for(lambda: agreed(nodes, "n1", set(IDS)), timeout=15)
        wait_for(lambda: spread(nodes), timeout=15)
        everyone = ",".join(n.address for n in nodes)

        def roll() -> None:
            for node in nodes:
                assert node.terminate() == 0
                node.respawn()
                wait_for(lambda: agreed(nodes, "n1", set(IDS)), timeout=20)

        async def run() -> list[str]:
            stop = asyncio.Event()
            acked: list[str] = []

            async with Client(everyone) as a, Client(everyone) as b:
                lanes = [
                    asyncio.create_task(lane(bus, f"s{i}", f"fault-{e}", 5, stop, acked))
                    for i, bus in enumerate((a, b))
                    for e in range(ENTITIES)
                ]
                await asyncio.to_thread(roll)
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*lanes)
            return acked

        acked = asyncio.run(run())
        assert len(acked) > 100
        with log_store(redis_url, log_url) as store:
            try:
                wait_for(lambda: _settled(r, acked, store), timeout=60)
            except AssertionError:
                missing = _missing(r, acked, store)
                raise AssertionError(f"acknowledged, never ran: {missing}") from None
            letters = DeadLetterQueue(store, "aq").entries()
            interrupted = {d.id for d in letters if d.reason == "interrupted"}
            assert not interrupted & set(acked), "a clean stop interrupted a message"
            check(r, acked, log=store)


def test_the_group_recovers_by_itself_from_a_redis_outage(
    tmp_path: Path, redis_url: str, redis_server: Any
) -> None:
    """Redis away for several node_ttl_ms: every node rejects new work meanwhile (nothing
    is buffered), the master steps down from its duties, no node declares another dead
    for it, and all serve again after (the master resumes by itself)."""
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                running_node(tmp_path / sid, redis_url, server_id=sid, shards=1, cluster=CLUSTER)
            )
            for sid in IDS
        ]
        wait_for(lambda: agreed(nodes, "n1", set(IDS)), timeout=15)
        epoch = nodes[0].status().epoch
        redis_server.stop(persist=True)
        try:
            with nodes[1].client() as client, pytest.raises(AqError) as refused:
                client.enqueue_and_wait(Span(name="outage"), timeout=2)
            assert refused.value.code in ("REDIS_UNAVAILABLE", "UNAVAILABLE")
            wait_for(lambda: "stepping down from master duties" in nodes[0].log(), timeout=10)
            time.sleep(4 * TTL_S)  # the outage itself: no condition to wait for
        finally:
            redis_server.start()
        wait_for(lambda: agreed(nodes, "n1", set(IDS)), timeout=20)
        assert all(n.proc.poll() is None for n in nodes), "a node stopped for an outage"
        for node in nodes:
            with node.client() as client:
                wait_for(lambda c=client: _serves(c), timeout=20)
        assert nodes[0].status().epoch >= epoch
        assert "master duties resumed" in nodes[0].log()


def _serves(client: Any) -> bool:
    try:
        client.enqueue_and_wait(Span(name=f"after-{time.monotonic()}"), timeout=2)
        return True
    except AqError:
        return False


def _missing(r: redis.Redis, acked: list[str], log: Any = None) -> list[tuple[str, dict[str, str]]]:
    """Acknowledged messages that neither ran nor were dead-lettered, with what every
    node's log says of them."""
    ran = set()
    for e in range(ENTITIES):
        ran |= {raw.decode().split(":")[3] for raw in r.lrange(f"t:span:fault-{e}", 0, -1)}
    gone = [mid for mid in acked if mid not in ran][:5]
    found = []
    for mid in gone:
        states = {}
        for sid in IDS:
            entry = (log or r).hgetall(f"aq:{{{sid}}}:m:{mid}")
            if entry:
                states[sid] = entry.get(b"state", b"?").decode()
        found.append((mid, states))
    return found
