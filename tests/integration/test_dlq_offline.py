"""`aqnode dlq` with the node stopped, and `--older-than` durations (SPEC section 7).

A node without ``[redis] url`` keeps its log, dead letters included, in the redis-server it
runs under ``data_dir``; once the node stops, so does that Redis. The dead-letter commands
start it for their own duration, and never a second one while the node runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

from aqnode.errors import HandlerError
from tests.handlers.testkit import Fail, FailWhileBroken
from tests.node_fixture import Node, node_env, running_node, write_config
from tests.redis_fixture import free_port


def aqnode(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqnode", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env or node_env(None),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def managed_redis_servers(node: Node) -> list[psutil.Process]:
    """Every redis-server running on this node's data_dir (it runs in data_dir/redis; it
    rewrites its own command line, so that cannot tell)."""
    where = (node.config_path.parent / "data" / "redis").resolve()
    found = []
    for proc in psutil.process_iter(["name", "cwd"]):
        if "redis-server" in (proc.info["name"] or "") and proc.info["cwd"] == str(where):
            found.append(proc)
    return found


def test_dlq_commands_start_a_stopped_managed_redis_for_their_duration(tmp_path: Path) -> None:
    with running_node(tmp_path, None) as node:
        # Given a dead letter in the log of a node that runs its own Redis
        with node.client() as bus, pytest.raises(HandlerError):
            bus.enqueue_and_wait(Fail(name="offline", text="boom"))
        listed = aqnode(node.config_path, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [d["entity_id"] for d in json.loads(listed.stdout)] == ["offline"]
        assert len(managed_redis_servers(node)) == 1  # the node's own; the CLI added none

        # When the node is stopped, its Redis stops with it
        assert node.terminate() == 0
        assert managed_redis_servers(node) == []

        # Then the dead-letter commands still work, and leave no redis-server behind
        listed = aqnode(node.config_path, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [d["entity_id"] for d in letters] == ["offline"]
        shown = aqnode(node.config_path, "dlq", "show", letters[0]["id"])
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["error"]["remote_message"] == "boom"
        assert managed_redis_servers(node) == []

        # A replay needs the node itself: one line says so
        replay = aqnode(node.config_path, "dlq", "replay", "--all", "--yes")
        assert replay.returncode == 1
        assert "aqnode serve --config" in replay.stderr
        assert len(replay.stderr.strip().splitlines()) == 1

        purged = aqnode(node.config_path, "dlq", "purge", "--id", letters[0]["id"], "--yes")
        assert purged.returncode == 0, purged.stderr
        assert "purged 1" in purged.stdout
        assert managed_redis_servers(node) == []

        # And the node starts again on its data_dir: the CLI let go of it
        node.respawn()
        listed = aqnode(node.config_path, "dlq", "list", "--json")
        assert json.loads(listed.stdout) == []


def test_dlq_commands_say_what_to_do_when_the_managed_redis_cannot_start(
    tmp_path: Path,
) -> None:
    # Given a node's config and data_dir, with the node stopped and no redis-server on PATH
    config = write_config(tmp_path / "node.toml", None, free_port())
    (tmp_path / "data" / "redis").mkdir(parents=True)
    env = node_env(None)
    env["PATH"] = str(tmp_path / "empty-path")
    result = aqnode(config, "dlq", "list", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "redis-server" in lines[0] and "aqnode serve --config" in lines[0]


def test_dlq_commands_on_a_data_dir_no_node_has_used_say_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", None, free_port())
    result = aqnode(config, "dlq", "list")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no node has run" in result.stderr
    assert not (tmp_path / "data").exists()  # reading created nothing


def test_purge_refuses_an_older_than_without_a_unit(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with running_node(tmp_path, redis_url) as node:
        redis_client.set("t:broken", 1)
        with node.client() as bus, pytest.raises(HandlerError):
            bus.enqueue_and_wait(FailWhileBroken(name="kept"))

        for bare in ("5", "0", "1.5"):
            refused = aqnode(node.config_path, "dlq", "purge", "--older-than", bare, "--yes")
            assert refused.returncode == 2, refused.stdout
            assert all(form in refused.stderr for form in ("30s", "5m", "2h", "7d"))
        listed = json.loads(aqnode(node.config_path, "dlq", "list", "--json").stdout)
        assert [d["entity_id"] for d in listed] == ["kept"]

        purged = aqnode(node.config_path, "dlq", "purge", "--older-than", "0s", "--yes")
        assert purged.returncode == 0, purged.stderr
        assert "purged 1" in purged.stdout
