"""Cluster mode under load (issue 8, "What must be shown"): three senders, each talking
to a different node, over hundreds of shared entities; and a petition storm while a new
master rebuilds its table."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from pathlib import Path

import redis

from aqnode.client import Client
from tests.handlers.testkit import Span, WhoRuns
from tests.integration.test_cluster_placement import IDS, group, kill_node, log_store, shard_pids
from tests.redis_fixture import wait_for

ENTITIES = 200
PER_SENDER = 4  #: messages per entity per sender


def spans(r: redis.Redis, name: str) -> list[tuple[float, float, int, str, int, str]]:
    out = []
    for raw in r.lrange(f"t:span:{name}", 0, -1):
        start, end, pid, mid, seq, sender = raw.decode().split(":")
        out.append((float(start), float(end), int(pid), mid, int(seq), sender))
    return out


def test_three_senders_on_three_nodes_share_entities_with_one_nodes_guarantees(
    tmp_path: Path, redis_url: str, log_url: str | None
) -> None:
    r = redis.Redis.from_url(redis_url)
    names = [f"load-{i}" for i in range(ENTITIES)]

    async def sender(address: str, who: str) -> list[str]:
        async with Client(address, follow_owners=False) as bus:
            calls = [
                bus.enqueue(Span(name=n, ms=1, seq=seq, sender=who))
                for seq in range(PER_SENDER)
                for n in names
            ]
            return list(await asyncio.gather(*calls))

    async def all_senders(addresses: list[str]) -> list[str]:
        results = await asyncio.gather(*(sender(a, f"s{i}") for i, a in enumerate(addresses)))
        return [mid for ids in results for mid in ids]

    with group(tmp_path, redis_url, log_url=log_url) as nodes:
        node_of_pid = {pid: n.address for n in nodes for pid in shard_pids(n)}
        acked = asyncio.run(all_senders([n.address for n in nodes]))
        assert len(acked) == len(set(acked)) == 3 * ENTITIES * PER_SENDER
        try:
            wait_for(lambda: sum(r.llen(f"t:span:{n}") for n in names) == len(acked), timeout=60)
        except AssertionError:
            ran_ids = {rec[3] for name in names for rec in spans(r, name)}
            missing = [mid for mid in acked if mid not in ran_ids][:5]
            with log_store(redis_url, log_url) as store:
                states = {
                    mid: {
                        n.address: store.hget(f"aq:{{{sid}}}:m:{mid}", "state")
                        for n, sid in zip(nodes, IDS, strict=True)
                    }
                    for mid in missing
                }
            raise AssertionError(
                f"{len(acked) - len(ran_ids)} acknowledged messages did not run in 60 s; "
                f"some, with their state in each node's log: {states}; statuses: "
                f"{[n.status().live_messages for n in nodes]}"
            ) from None
        ran: list[str] = []
        homes: dict[str, set[str]] = defaultdict(set)
        for name in names:
            records = spans(r, name)
            ran += [rec[3] for rec in records]
            homes[name] = {node_of_pid[rec[2]] for rec in records}
            by_start = sorted(records)
            for before, after in itertools.pairwise(by_start):
                assert after[0] >= before[1], f"{name}: two handlers overlapped"
            for who in ("s0", "s1", "s2"):
                seqs = [rec[4] for rec in records if rec[5] == who]
                assert seqs == list(range(PER_SENDER)), f"{name}: {who} out of order {seqs}"
        assert sorted(ran) == sorted(acked)  # each acknowledged message ran exactly once
        assert all(len(h) == 1 for h in homes.values()), "an entity ran on two nodes"
        assert len({next(iter(h)) for h in homes.values()}) == 3  # all nodes took a share


def test_a_petition_storm_while_the_master_rebuilds_is_retried_for_the_client(
    tmp_path: Path, redis_url: str, log_url: str | None
) -> None:
    """New entities sent through the survivors while the master is dead and its successor
    rebuilds: the nodes retry MASTER_REBUILDING themselves, every call succeeds, and each
    entity runs on one node (nothing was delivered on a guess)."""
    names = [f"storm-{i}" for i in range(150)]

    async def storm(addresses: list[str]) -> dict[str, set[int]]:
        async with (
            Client(addresses[0], follow_owners=False) as a,
            Client(addresses[1], follow_owners=False) as b,
        ):
            first = await asyncio.gather(
                *(c.enqueue_and_wait(WhoRuns(name=n), timeout=10) for n in names for c in (a, b))
            )
            again = await asyncio.gather(
                *(c.enqueue_and_wait(WhoRuns(name=n), timeout=10) for n in names for c in (a, b))
            )
        pids: dict[str, set[int]] = defaultdict(set)
        for i, pid in enumerate([*first, *again]):
            pids[names[(i // 2) % len(names)]].add(pid)
        return pids

    with group(tmp_path, redis_url, log_url=log_url) as nodes:
        kill_node(nodes[0])  # the master
        pids = asyncio.run(storm([n.address for n in nodes[1:]]))
        assert all(len(p) == 1 for p in pids.values()), "an entity ran in two processes"
        survivors = {pid for n in nodes[1:] for pid in shard_pids(n)}
        assert set().union(*pids.values()) <= survivors
