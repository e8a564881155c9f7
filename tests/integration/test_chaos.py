"""The guarantees under real faults and continuous load (SPEC section 5).

Given several senders feeding a 2-shard node without pause, when one shard is killed
with SIGKILL, then the supervisor (and the node is restarted), then Redis is stopped and
started again, then, once everything has settled:

- no message ran twice;
- every acknowledged message ran exactly once or was dead-lettered as `interrupted`;
- each entity ran each sender's messages in the order that sender enqueued them;
- the shard that was not killed kept completing messages while the other was down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from aqnode.client import Client, background_loop
from aqnode.errors import AqError
from aqnode.wal.dlq import DeadLetterQueue
from tests.handlers.testkit import Record
from tests.node_fixture import Node, running_node
from tests.redis_fixture import RedisServer, wait_for

SENDERS = 4
ENTITIES = 16
PAUSE_S = 0.004  #: seconds between one sender's sends, so that the load is steady


@dataclass
class Load:
    """Senders on their own event loop in a thread; each awaits its enqueue (an ack)."""

    address: str
    acked: dict[str, tuple[str, str, int]] = field(
        default_factory=dict
    )  # id -> entity, sender, seq
    refused: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # code -> one message
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _done: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._done = asyncio.run_coroutine_threadsafe(self._main(), background_loop())

    def stop(self) -> None:
        self._stop.set()
        self._done.result(60)

    async def _main(self) -> None:
        await asyncio.gather(*(self._sender(f"s{i}") for i in range(SENDERS)))

    async def _sender(self, name: str) -> None:
        async with Client(self.address) as bus:
            seq = 0
            while not self._stop.is_set():
                entity = f"e{(seq * 7 + int(name[1:])) % ENTITIES}"
                self.sent += 1
                try:
                    mid = await bus.enqueue(Record(name=entity, sender=name, seq=seq))
                    self.acked[mid] = (entity, name, seq)
                except AqError as exc:
                    self.refused[exc.code] += 1
                    self.examples.setdefault(exc.code, exc.message)
                    await asyncio.sleep(0.02)
                seq += 1
                await asyncio.sleep(PAUSE_S)

    def refusals(self, code: str) -> int:
        return self.refused[code]


def executions(records: Path) -> list[tuple[float, int, str, str, int, str]]:
    rows = []
    for path in records.glob("exec-*.log"):
        for line in path.read_text().splitlines():
            ts, pid, entity, sender, seq, mid = line.split()
            rows.append((float(ts), int(pid), entity, sender, int(seq), mid))
    return sorted(rows)


def test_no_duplicates_no_loss_fifo_under_shard_supervisor_and_redis_faults(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, redis_client: redis.Redis
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    env = {"AQ_TEST_RECORD_DIR": str(records)}
    overrides = {"redis": {"health_check_ms": 100}, "drain_timeout_ms": 2000}
    with running_node(tmp_path / "n", redis_url, env=env, **overrides) as node:
        load = Load(node.address)
        load.start()
        _wait_progress(load, 300)

        # 1. kill -9 one shard; the other must keep completing meanwhile
        before = node.status()
        victim, survivor = before.shards[0].pid, before.shards[1].pid
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _restarted(node, victim), timeout=20, message="shard not restarted")
        back_at = time.time()
        _wait_progress(load, 300)

        # 2. kill -9 the supervisor (its shards go with it), then start the node again
        shard_pids = node.shard_pids()
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(10)
        wait_for(lambda: not any(_alive(p) for p in shard_pids), timeout=10)
        node.respawn()
        _wait_progress(load, 300)

        # 3. stop Redis (keeping its data, as a restarted server would), then start it
        redis_server.stop(persist=True)
        wait_for(
            lambda: load.refusals("REDIS_UNAVAILABLE") > 0,
            timeout=20,
            message="no REDIS_UNAVAILABLE during the outage",
        )
        redis_server.start()
        _wait_progress(load, 300)
        load.stop()

        # Let everything acknowledged finish (run, or be dead-lettered)
        dlq = DeadLetterQueue(redis.Redis.from_url(redis_url), "aq")

        def settled() -> bool:
            ran = {row[5] for row in executions(records)}
            dead = {d.id for d in dlq.entries()}
            return all(mid in ran or mid in dead for mid in load.acked)

        try:
            wait_for(settled, timeout=90, interval=0.2, message="acknowledged messages stuck")
        except AssertionError:
            ran = {row[5] for row in executions(records)}
            dead = {d.id for d in dlq.entries()}
            stuck = [m for m in load.acked if m not in ran and m not in dead][:5]
            states = {m: redis_client.hgetall(f"aq:{{test-node}}:m:{m}") for m in stuck}
            raise AssertionError(f"stuck: {states}\n{node.log()[-3000:]}") from None

    rows = executions(records)
    ran = Counter(row[5] for row in rows)
    letters = {d.id: d for d in dlq.entries()}
    duplicates = [mid for mid, n in ran.items() if n > 1]
    assert duplicates == [], f"messages executed twice: {duplicates[:10]}"
    assert {d.reason for d in letters.values()} <= {"interrupted"}
    for mid in load.acked:
        assert ran[mid] == 1 or mid in letters, (
            f"acknowledged {mid} neither ran nor was dead-lettered"
        )

    # FIFO per entity and sender, in execution order
    last: dict[tuple[str, str], int] = defaultdict(lambda: -1)
    for _, _, entity, sender, seq, _mid in rows:
        assert seq > last[(entity, sender)], (
            f"{entity} ran {sender}:{seq} after {last[(entity, sender)]}"
        )
        last[(entity, sender)] = seq

    # The surviving shard worked while its sibling was down
    during = [r for r in rows if killed_at < r[0] < back_at and r[1] == survivor]
    assert during, "the other shard paused while one shard was down"

    print(
        f"\nchaos: sent {load.sent}, acknowledged {len(load.acked)}, executed {len(ran)}, "
        f"dead-lettered {len(letters)} (interrupted), duplicates {len(duplicates)}, "
        f"refused {dict(load.refused)} ({load.examples}), "
        f"survivor ran {len(during)} during the shard outage"
    )


def _wait_progress(load: Load, count: int) -> None:
    target = len(load.acked) + count
    wait_for(lambda: len(load.acked) >= target, timeout=30, message="the load made no progress")


def _restarted(node: Node, victim: int) -> bool:
    try:
        shard = node.status().shards[0]
    except AqError:
        return False
    return shard.alive and shard.pid not in (0, victim)


def _alive(pid: int) -> bool:
    from tests.node_fixture import gone

    return not gone(pid)
