"""Cluster mode, first part (SPEC 10.1 "Forming", "Seeing it", "Restarting"): members
heartbeat in Redis, every member reports the same master (the live member with the
lowest server_id) and epoch, a change of master takes a new epoch, a second live node
with a server_id in use is refused, a stopping node leaves at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aqnode.errors import AqError
from tests.node_fixture import Node, node_env, running_node, write_config
from tests.redis_fixture import free_port, wait_for

CLUSTER = {
    "enabled": True,
    "heartbeat_ms": 100,
    "node_ttl_ms": 600,
    "leader_debounce_ms": 200,
    "reconcile_interval_ms": 500,
}
#: SPEC 10.1: the group serves again within node_ttl_ms + leader_debounce_ms + 1 s
FAILOVER_BOUND_S = (600 + 200) / 1000 + 1.0


def status(node: Node) -> Any | None:
    try:
        return node.status()
    except AqError:
        return None


def agreed(nodes: list[Node], master: str, alive: set[str]) -> tuple[int, str] | None:
    """(epoch, master) when every node reports ``master``, one epoch and ``alive``."""
    seen = [status(n) for n in nodes]
    if any(s is None for s in seen):
        return None
    views = {
        (s.master, s.epoch, frozenset(m.server_id for m in s.members if m.alive)) for s in seen
    }
    if len(views) != 1:
        return None
    got_master, epoch, live = views.pop()
    if got_master != master or set(live) != alive:
        return None
    roles = {s.server_id: s.role for s in seen}
    assert roles == {sid: "master" if sid == master else "replica" for sid in roles}, roles
    return epoch, got_master


@contextlib.contextmanager
def group(tmp_path: Path, redis_url: str, ids: list[str]) -> Iterator[list[Node]]:
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                running_node(tmp_path / sid, redis_url, server_id=sid, shards=1, cluster=CLUSTER)
            )
            for sid in ids
        ]
        yield nodes


def test_three_nodes_agree_on_the_lowest_id_as_master_and_fail_over(
    tmp_path: Path, redis_url: str
) -> None:
    with group(tmp_path, redis_url, ["n1", "n2", "n3"]) as nodes:
        first = wait_for(lambda: agreed(nodes, "n1", {"n1", "n2", "n3"}), timeout=15)
        assert first[0] >= 1
        # When the master dies (the whole process group, no goodbye)
        n1 = nodes[0]
        killed = time.monotonic()
        os.killpg(n1.proc.pid, signal.SIGKILL)
        second = wait_for(lambda: agreed(nodes[1:], "n2", {"n2", "n3"}), timeout=15)
        took = time.monotonic() - killed
        # Then the next-lowest is master, with a new epoch, within the SPEC's bound
        assert second[0] > first[0]
        assert took < FAILOVER_BOUND_S + 1.0, f"failover took {took:.2f}s"
        # And a restarted n1 takes its place back, with another new epoch
        n1.respawn()
        third = wait_for(lambda: agreed(nodes, "n1", {"n1", "n2", "n3"}), timeout=15)
        assert third[0] > second[0]


def test_a_second_live_node_with_a_server_id_in_use_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    with group(tmp_path, redis_url, ["a1"]) as nodes:
        wait_for(lambda: agreed(nodes, "a1", {"a1"}), timeout=15)
        (tmp_path / "twin").mkdir()
        config = write_config(
            tmp_path / "twin" / "node.toml",
            redis_url,
            free_port(),
            server_id="a1",
            shards=1,
            cluster=CLUSTER,
        )
        result = subprocess.run(
            [sys.executable, "-m", "aqnode", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            env=node_env(redis_url),
            timeout=60,
            cwd=config.parent,
        )
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert "'a1' is in use by a live node" in last, result.stderr
        assert status(nodes[0]) is not None and nodes[0].proc.poll() is None


def test_a_stopping_node_leaves_at_once(tmp_path: Path, redis_url: str) -> None:
    with group(tmp_path, redis_url, ["s1", "s2"]) as nodes:
        wait_for(lambda: agreed(nodes, "s1", {"s1", "s2"}), timeout=15)
        assert nodes[1].terminate() == 0
        # The others list it as gone at once, not after node_ttl_ms
        wait_for(lambda: agreed(nodes[:1], "s1", {"s1"}), timeout=5)
        (s1,) = [s for s in [status(nodes[0])] if s is not None]
        assert [m.server_id for m in s1.members if m.alive] == ["s1"]


@pytest.mark.parametrize("flag", ["--json"])
def test_status_json_shows_the_group(tmp_path: Path, redis_url: str, flag: str) -> None:
    import json

    with group(tmp_path, redis_url, ["j1", "j2"]) as nodes:
        wait_for(lambda: agreed(nodes, "j1", {"j1", "j2"}), timeout=15)
        shown = subprocess.run(
            [sys.executable, "-m", "aqnode", "status", "--address", nodes[1].address, flag],
            capture_output=True,
            text=True,
            env=node_env(redis_url),
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        assert doc["role"] == "replica" and doc["master"] == "j1"
        assert isinstance(doc["epoch"], int) and doc["epoch"] >= 1
        assert [(m["server_id"], m["alive"], m["role"]) for m in doc["members"]] == [
            ("j1", True, "master"),
            ("j2", True, "replica"),
        ]
        assert all(m["address"] for m in doc["members"])


def test_a_node_whose_server_id_was_taken_while_it_was_paused_stops(
    tmp_path: Path, redis_url: str
) -> None:
    """Found in review: a node paused past node_ttl_ms, replaced by a new process with
    its server_id (and so its log), kept serving when it resumed: two writers of one log."""
    with running_node(
        tmp_path / "old", redis_url, server_id="p1", shards=1, cluster=CLUSTER
    ) as old:
        wait_for(lambda: agreed([old], "p1", {"p1"}), timeout=15)
        os.killpg(old.proc.pid, signal.SIGSTOP)
        try:
            with running_node(
                tmp_path / "new", redis_url, server_id="p1", shards=1, cluster=CLUSTER
            ) as new:
                wait_for(lambda: agreed([new], "p1", {"p1"}), timeout=15)
                os.killpg(old.proc.pid, signal.SIGCONT)
                assert old.wait_exit(30) == 1, old.log()
                assert "another process took server_id 'p1'" in old.log()
                assert status(new) is not None and new.proc.poll() is None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.proc.pid, signal.SIGCONT)
