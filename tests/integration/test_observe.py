"""`aqnode status` and the Prometheus endpoint, against a real node (SPEC section 12)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from aqnode.errors import AqError
from tests.handlers.testkit import Fail, Get, Incr
from tests.node_fixture import node_env, running_node
from tests.redis_fixture import free_port, wait_for


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_move_when_messages_flow(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    with running_node(tmp_path, redis_url, metrics_listen=f"127.0.0.1:{port}") as node:
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        with node.client() as bus:
            for _ in range(5):
                bus.enqueue_and_wait(Incr(name="m"))
            with pytest.raises(AqError):
                bus.enqueue_and_wait(Fail(name="m", text="no"))
            with pytest.raises(AqError):
                bus.enqueue_raw("counter", "Nope", "m", {})
        after = scrape(url)
        key = 'aqnode_messages_enqueued_total{entity_type="counter"}'
        assert after[key] - before.get(key, 0) == 6
        assert after['aqnode_messages_completed_total{entity_type="counter"}'] >= 5
        assert after['aqnode_messages_failed_total{entity_type="counter"}'] == 1
        rejected = 'aqnode_messages_rejected_total{entity_type="counter",code="UNKNOWN_MESSAGE"}'
        assert after[rejected] == 1
        dead = 'aqnode_messages_dead_lettered_total{entity_type="counter",reason="exhausted"}'
        assert after[dead] == 1
        assert after['aqnode_handler_seconds_count{entity_type="counter"}'] >= 6
        assert after['aqnode_queue_wait_seconds_count{entity_type="counter"}'] >= 6
        assert any(k.startswith("aqnode_wal_commit_batch_size_count") for k in after)
        assert after["aqnode_live_messages"] == 0
        assert after["aqnode_redis_up"] == 1
        assert 'aqnode_workers{shard="0"}' in after and 'aqnode_workers{shard="1"}' in after
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert missing.value.code == 404
        missing.value.close()


def test_status_shows_shards_and_what_they_did(tmp_path: Path, redis_url: str) -> None:
    with running_node(tmp_path, redis_url) as node:
        with node.client() as bus:
            bus.enqueue_many([Incr(name=f"s{i}") for i in range(30)])
            bus.enqueue_and_wait(Get(name="s29"))
        base = [sys.executable, "-m", "aqnode", "status", "--address", node.address]

        def handled() -> int:
            shown = subprocess.run(
                [*base, "--json"], capture_output=True, text=True, env=node_env(None), timeout=30
            )
            assert shown.returncode == 0, shown.stderr
            data = json.loads(shown.stdout)
            assert data["server_id"] == "test-node" and data["role"] == "standalone"
            assert len(data["shards"]) == 2
            assert all(s["alive"] and s["pid"] > 0 for s in data["shards"])
            assert all(s["rss_bytes"] > 0 for s in data["shards"])
            assert all("handled_per_s" in s for s in data["shards"])
            return sum(s["handled"] for s in data["shards"])

        assert wait_for(lambda: handled() >= 31, message="status never showed the work")
        human = subprocess.run(base, capture_output=True, text=True, env=node_env(None), timeout=30)
        assert human.returncode == 0
        assert "test-node" in human.stdout
        assert len(re.findall(r"^\s+[01]\s+\d+\s+yes", human.stdout, re.M)) == 2


def test_a_taken_metrics_port_stops_the_node_with_a_message(tmp_path: Path, redis_url: str) -> None:
    import socket

    from tests.node_fixture import write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "node.toml", redis_url, free_port(), metrics_listen=f"127.0.0.1:{port}"
        )
        result = subprocess.run(
            [sys.executable, "-m", "aqnode", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            env=node_env(redis_url),
            timeout=60,
        )
    assert result.returncode == 2
    assert "metrics" in result.stderr.lower() and str(port) in result.stderr
