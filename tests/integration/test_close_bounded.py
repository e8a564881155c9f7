"""Closing never waits on a node that reads nothing (paused with SIGSTOP, here): a gRPC
connection's half-close waits behind the frames still being written, and before it had a
bound it held the close, and with it the stop of a cluster member whose peer was paused,
for as long as the peer stayed paused (until the stop's bound ended the node, exit 1)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
from pathlib import Path

from aqnode import errors
from aqnode.client import SyncClient
from aqnode.errors import AqError
from tests.handlers.testkit import WhoRuns
from tests.integration.test_cluster_placement import IDS, group, shard_pids
from tests.integration.test_observe import scrape
from tests.redis_fixture import free_port, wait_for

#: payloads that fill HTTP/2's windows many times over, each under max_payload_bytes
PAD = 3 << 20
CALLS = 20


def padded(name: str) -> bytes:
    return json.dumps({"name": name, "pad": "x" * PAD}).encode()


def test_a_member_stops_while_the_peer_it_forwards_to_is_paused(
    tmp_path: Path, redis_url: str
) -> None:
    """n1 forwards large calls to n2, which is paused; SIGTERM to n1 ends it at once
    (exit 0), its callers told UNAVAILABLE, instead of hanging until the stop's bound."""
    port = free_port()
    with group(tmp_path, redis_url, metrics_listen=f"127.0.0.1:{port}") as nodes:
        by_id = dict(zip(IDS, nodes, strict=True))
        owner_of_pid = {pid: sid for sid, n in by_id.items() for pid in shard_pids(n)}
        n1, n2 = by_id["n1"], by_id["n2"]
        with SyncClient(n1.address, follow_owners=False, transport="grpc") as client:
            name = next(
                f"paused-{i}"
                for i in range(100)
                if owner_of_pid[client.enqueue_and_wait(WhoRuns(name=f"paused-{i}"))] == "n2"
            )

        def forwarded() -> float:
            return scrape(f"http://127.0.0.1:{port}/metrics")["aqnode_cluster_forwarded_total"]

        before = forwarded()
        os.kill(n2.pid, signal.SIGSTOP)
        try:
            with (
                SyncClient(n1.address, follow_owners=False, transport="grpc") as sender,
                concurrent.futures.ThreadPoolExecutor(4) as pool,
            ):
                calls = [
                    pool.submit(sender.enqueue_raw, "counter", "Incr", name, padded(name))
                    for _ in range(CALLS // 2)
                ]
                # n1 has posted calls on its stream to n2, which reads nothing
                wait_for(lambda: forwarded() >= before + 4, timeout=30)
                n1.proc.send_signal(signal.SIGTERM)
                assert n1.wait_exit(30) == 0
                for call in calls:
                    try:
                        call.result(30)
                    except AqError as exc:
                        assert exc.code in (errors.UNAVAILABLE, errors.DRAINING), exc
        finally:
            os.kill(n2.pid, signal.SIGCONT)
