"""`aqnode status --json` and ``Client.status()``: one typed, snake_case document (SPEC 10.1)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from aqnode.client import Member, NodeStatus, ShardStatus
from tests.handlers.testkit import Get, Incr
from tests.node_fixture import NODE_ID, Node, node_env, running_node

SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
COUNTS = ("pid", "index", "rss_bytes", "workers", "queue_depth", "handled", "restarts")


def status_json(node: Node) -> tuple[str, dict[str, Any]]:
    shown = subprocess.run(
        [sys.executable, "-m", "aqnode", "status", "--json", "--address", node.address],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout, json.loads(shown.stdout)


def keys(value: Any) -> list[str]:
    """Every object key in a JSON document, nested ones included."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *keys(v))]
    if isinstance(value, list):
        return [k for item in value for k in keys(item)]
    return []


def test_status_json_is_snake_case_with_numbers_and_the_groups_view(fresh: Node) -> None:
    with fresh.client() as bus:
        bus.enqueue_and_wait(Incr(name="st"))
    _, data = status_json(fresh)

    assert [k for k in keys(data) if not SNAKE.fullmatch(k)] == []
    assert data["role"] == "standalone" and data["master"] == NODE_ID
    assert type(data["epoch"]) is int
    assert data["members"] == [
        {"server_id": NODE_ID, "address": fresh.address, "alive": True, "role": "standalone"}
    ]
    assert type(data["live_messages"]) is int and type(data["uptime_s"]) is float
    assert len(data["shards"]) == 2
    for shard in data["shards"]:
        assert all(type(shard[k]) is int for k in COUNTS), shard
        assert shard["alive"] is True and shard["pid"] > 0 and shard["rss_bytes"] > 0
        assert type(shard["cpu_percent"]) is float and type(shard["handled_per_s"]) is float


def test_status_json_keeps_one_key_order_the_typed_objects_own(fresh: Node) -> None:
    first, data = status_json(fresh)
    with fresh.client() as bus:
        bus.enqueue_and_wait(Get(name="order"))
    _, again = status_json(fresh)

    assert keys(data) == keys(again)
    assert list(data) == list(NodeStatus.__struct_fields__)
    assert list(data["shards"][0]) == list(ShardStatus.__struct_fields__)
    assert list(data["members"][0]) == list(Member.__struct_fields__)
    assert first.startswith('{\n  "')  # indented for people, one key per line


def test_client_status_is_a_typed_object_whose_json_the_cli_prints(fresh: Node) -> None:
    with fresh.client() as bus:
        status = bus.status(timeout=5.0)
    assert isinstance(status, NodeStatus)
    assert status.server_id == NODE_ID and status.role == "standalone"
    assert all(isinstance(s, ShardStatus) for s in status.shards)
    assert [m.server_id for m in status.members] == [NODE_ID]
    _, data = status_json(fresh)
    assert keys(json.loads(msgspec.json.encode(status))) == keys(data)


def test_the_cli_sends_auth_token_from_the_flag_or_the_environment(
    tmp_path: Path, redis_url: str
) -> None:
    with running_node(tmp_path, redis_url, auth_token="s3cret") as node:
        base = [sys.executable, "-m", "aqnode", "status", "--address", node.address]
        env = node_env(None)
        env.pop("AQNODE_AUTH_TOKEN", None)

        def status(*extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*base, *extra],
                capture_output=True,
                text=True,
                env={**env, **more_env},
                cwd=tmp_path.parent,  # no ./node.toml to take a token from
                timeout=30,
            )

        assert "UNAUTHENTICATED" in status().stderr
        assert status("--auth-token", "s3cret").returncode == 0
        assert status(AQNODE_AUTH_TOKEN="s3cret").returncode == 0
