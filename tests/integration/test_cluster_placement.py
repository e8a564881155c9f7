"""Cluster mode (SPEC 10.1 "One node's semantics, group-wide", "Clients", "Failover"):
any node accepts any call, each entity runs on one node, forwarded calls keep one node's
semantics, clients with several addresses move on, the group serves after its master dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aqnode.client import Client, SyncClient
from aqnode.errors import AqError, HandlerError
from tests.handlers.testkit import Fail, Get, Incr, Span, WhoRuns
from tests.integration.test_cluster_membership import CLUSTER, FAILOVER_BOUND_S, agreed
from tests.node_fixture import Node, running_node
from tests.redis_fixture import wait_for

IDS = ["n1", "n2", "n3"]


@contextlib.contextmanager
def group(tmp_path: Path, redis_url: str, ids: list[str] = IDS) -> Iterator[list[Node]]:
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                running_node(tmp_path / sid, redis_url, server_id=sid, shards=1, cluster=CLUSTER)
            )
            for sid in ids
        ]
        wait_for(lambda: agreed(nodes, ids[0], set(ids)), timeout=15)
        wait_for(lambda: spread(nodes), timeout=15)
        yield nodes


_probes = itertools.count()


def spread(nodes: list[Node]) -> bool:
    """The master places new entities on every node (each has answered ListWorkers)."""
    owner_of_pid = {pid: n.address for n in nodes for pid in shard_pids(n)}
    seen = set()
    with SyncClient(nodes[0].address) as client:
        for _ in range(30):
            name = f"probe-{next(_probes)}"
            seen.add(owner_of_pid.get(client.enqueue_and_wait(WhoRuns(name=name))))
    return seen == {n.address for n in nodes}


def shard_pids(node: Node) -> set[int]:
    return {s.pid for s in node.status().shards}


def test_any_node_accepts_any_call_and_each_entity_runs_on_one_node(
    tmp_path: Path, redis_url: str
) -> None:
    with group(tmp_path, redis_url) as nodes:
        owner_of_pid = {pid: n.address for n in nodes for pid in shard_pids(n)}
        clients = [SyncClient(n.address, follow_owners=False) for n in nodes]
        try:
            homes: dict[str, set[str]] = {}
            for i in range(24):
                name = f"c{i}"
                for c in clients:  # the same entity through every node
                    assert c.enqueue_and_wait(Incr(name=name)).name == name
                    homes.setdefault(name, set()).add(owner_of_pid[c.enqueue_and_wait(WhoRuns(name=name))])
                assert clients[i % 3].enqueue_and_wait(Get(name=name)) == 3
            assert all(len(h) == 1 for h in homes.values()), homes
            assert len({next(iter(h)) for h in homes.values()}) == 3  # spread over nodes
        finally:
            for c in clients:
                c.close()
