"""A real three-master Redis Cluster for the tests (no replicas), one per session.

Three ``redis-server --cluster-enabled yes`` children on free ports, joined with
``redis-cli --cluster create``; the cluster is ready once every node reports
``cluster_state:ok`` and agrees on all 16384 slots. ``flush()`` empties every master.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.redis_fixture import RedisServer, free_port

MASTERS = 3


class RedisClusterServer:
    def __init__(self, directory: Path) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(MASTERS):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            server = RedisServer(node_dir)
            server.extra_conf = [
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                "cluster-node-timeout 5000",
                # the bus port defaults to port + 10000, too high for an ephemeral port
                f"cluster-port {free_port()}",
            ]
            self.nodes.append(server)

    @property
    def url(self) -> str:
        """The aqnode config's ``[redis] url`` for this cluster."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self) -> RedisCluster:
        """A new sync cluster client (the caller closes it)."""
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes],
        )

    def start(self, timeout: float = 30.0) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not on PATH (it comes with redis-server)", pytrace=False)
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{created.stdout}")
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise AssertionError("the Redis Cluster did not become ready in time")
            time.sleep(0.05)

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.cluster("info")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                if int(info["cluster_known_nodes"]) != MASTERS:
                    return False
        return True

    def flush(self) -> None:
        """Empty every master and its script cache."""
        for node in self.nodes:
            with node.client() as client:
                client.flushall()
                client.script_flush()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@contextlib.contextmanager
def session_redis_cluster(directory: Path) -> Iterator[RedisClusterServer]:
    cluster = RedisClusterServer(directory)
    atexit.register(cluster.close)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        atexit.unregister(cluster.close)


def slot_owner_ports(cluster: RedisClusterServer, keys: list[str]) -> set[int]:
    """The ports of the masters that hold ``keys``' slots."""
    with cluster.client() as client:
        return {client.get_node_from_key(k).port for k in keys}


__all__ = ["RedisClusterServer", "redis", "session_redis_cluster", "slot_owner_ports"]
