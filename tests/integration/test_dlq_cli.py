"""`aqnode dlq` end to end, against a real node and Redis (SPEC section 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from aqnode.errors import HandlerError
from tests.handlers.testkit import FailWhileBroken, Get
from tests.node_fixture import Node, node_env, running_node


def aqnode(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqnode", *args, "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_dlq_list_show_replay_purge(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, log_url: str | None
) -> None:
    """On one Redis, and with the log on a Redis Cluster (the CLI reads the config's URL)."""
    log = {"redis": {"url": log_url}} if log_url else {}
    with running_node(tmp_path, redis_url, **log) as node:
        # Given four messages dead-lettered while a dependency was broken
        redis_client.set("t:broken", 1)
        with node.client() as bus:
            for name in ("a", "b", "c", "d"):
                with pytest.raises(HandlerError):
                    bus.enqueue_and_wait(FailWhileBroken(name=name))
        redis_client.delete("t:broken")

        listed = aqnode(node, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [d["entity_id"] for d in letters] == ["a", "b", "c", "d"]
        for field in (
            "id",
            "message_id",
            "entity_type",
            "entity_id",
            "message",
            "payload",
            "reason",
            "error",
            "attempts",
            "dead_lettered_at",
        ):
            assert field in letters[0]
        first = letters[0]
        assert first["reason"] == "exhausted" and first["payload"] == {"name": "a"}
        assert first["error"]["remote_type"] == "RuntimeError"
        assert (
            json.loads(aqnode(node, "dlq", "list", "--json", "--entity-type", "nope").stdout) == []
        )
        human = aqnode(node, "dlq", "list")
        assert first["id"] in human.stdout and "exhausted" in human.stdout

        shown = aqnode(node, "dlq", "show", first["id"])
        assert shown.returncode == 0
        assert (
            "the downstream service is broken"
            in json.loads(shown.stdout)["error"]["remote_traceback"]
        )

        # When one entry is replayed twice, it runs once
        assert aqnode(node, "dlq", "replay", "--id", first["id"]).returncode == 0
        again = aqnode(node, "dlq", "replay", "--id", first["id"])
        assert again.returncode == 1 and "no dead letter" in again.stderr

        # Purging asks for confirmation when it cannot ask a terminal
        refused = aqnode(node, "dlq", "purge", "--id", letters[1]["id"])
        assert refused.returncode == 1 and "--yes" in refused.stderr
        assert (
            "nothing to purge" in aqnode(node, "dlq", "purge", "--older-than", "1h", "--yes").stdout
        )
        assert "purged 1" in aqnode(node, "dlq", "purge", "--id", letters[1]["id"], "--yes").stdout

        replayed = aqnode(node, "dlq", "replay", "--all", "--yes")
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 2 of 2" in replayed.stdout
        with node.client() as bus:
            for name in ("a", "c", "d"):
                bus.enqueue_and_wait(Get(name=name))  # FIFO: answered after the replay ran
        assert {n: redis_client.get(f"t:fixed:{n}") for n in "abcd"} == {
            "a": b"1",
            "b": None,
            "c": b"1",
            "d": b"1",
        }
        assert json.loads(aqnode(node, "dlq", "list", "--json").stdout) == []


def test_dlq_commands_explain_a_missing_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aqnode", "dlq", "list", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        env=node_env(None),
        timeout=30,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr
