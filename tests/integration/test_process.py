"""Process-level behaviour of `aqnode serve`: start-up errors, crashes, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aqnode.examples.bank import Deposit, GetBalance
from tests.handlers.testkit import Incr, WhoRuns
from tests.node_fixture import gone, node_env, running_node, write_config
from tests.redis_fixture import RedisServer, free_port, wait_for


def serve_once(
    config: Path, redis_url: str | None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=node_env(redis_url),
        timeout=timeout,
        cwd=config.parent,
    )


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('handlers = ["tests.handlers.testkit"]\nshards = 0\n', "shards", "1"),
        ('handlers = ["tests.handlers.testkit"]\nbogus = 1\n', "bogus", "unknown"),
        (
            'handlers = ["tests.handlers.testkit"]\n[entities.counter]\nreply_timeout_ms = "x"\n',
            "entities.counter.reply_timeout_ms",
            "int",
        ),
    ],
)
def test_bad_config_stops_the_node_before_any_shard_starts(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body + f'data_dir = "{tmp_path / "data"}"\n')
    result = serve_once(config, None)
    assert result.returncode == 2
    assert "bad.toml" in result.stderr and key in result.stderr, result.stderr
    assert problem.lower() in result.stderr.lower(), result.stderr
    assert not (tmp_path / "data").exists(), "nothing may start before the config is valid"


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("tests.handlers.broken_import", ["broken on purpose", "Traceback"]),
        ("tests.handlers.duplicate", ["first_ping", "second_ping"]),
        ("tests.handlers.no_id", ["Lost", "id_field"]),
    ],
)
def test_bad_handler_modules_stop_the_node_with_a_clear_error(
    tmp_path: Path, redis_url: str, module: str, expected: list[str]
) -> None:
    config = write_config(tmp_path / "node.toml", redis_url, free_port(), handlers=[module])
    result = serve_once(config, redis_url)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr


def test_killing_the_supervisor_leaves_no_shard_behind(tmp_path: Path, redis_url: str) -> None:
    with running_node(tmp_path, redis_url) as node:
        shards = node.shard_pids()
        assert len(shards) == 2 and all(not gone(p) for p in shards)
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(5)
        wait_for(lambda: all(gone(p) for p in shards), timeout=5, message="orphaned shards")


def test_a_killed_shard_is_restarted_and_the_other_keeps_serving(
    tmp_path: Path, redis_url: str
) -> None:
    with running_node(tmp_path, redis_url) as node, node.client() as bus:
        before = node.status()
        victim = before.shards[0].pid
        os.kill(victim, signal.SIGKILL)
        # The other shard serves meanwhile: find an entity it owns and use it.
        other = before.shards[1].pid
        names = [f"k{i}" for i in range(200)]
        owned = next(n for n in names if bus.enqueue_and_wait(WhoRuns(name=n)) == other)
        assert bus.enqueue_and_wait(Incr(name=owned)).value == 1

        def restarted() -> bool:
            shard = node.status().shards[0]
            return shard.alive and shard.pid != victim and shard.restarts == 1

        wait_for(
            restarted, timeout=15, message=f"the killed shard was not restarted:\n{node.log()}"
        )
        pids = {bus.enqueue_and_wait(WhoRuns(name=n)) for n in names[:40]}
        assert victim not in pids and len(pids) == 2


def test_embedded_redis_by_default_and_sigterm_stops_it(tmp_path: Path) -> None:
    with running_node(tmp_path, None, handlers=["aqnode.examples.bank"]) as node:
        with node.client() as bus:
            bus.enqueue(Deposit(account_id="embedded", amount=3))
            assert bus.enqueue_and_wait(GetBalance(account_id="embedded")).balance == 3
        redis_servers = [
            p for p in psutil.Process(node.pid).children() if "redis-server" in p.name()
        ]
        assert len(redis_servers) == 1
        aof = list((tmp_path / "data" / "redis").rglob("*.aof*"))
        assert aof, "the managed redis-server must run with AOF on"
        assert node.terminate() == 0
        assert all(gone(p.pid) for p in redis_servers)


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.ensure_running()
    with running_node(tmp_path, redis_server.url) as node:
        with node.client() as bus:
            bus.enqueue_and_wait(Incr(name="drain"))
        assert node.terminate() == 0
        assert "draining" in node.log()


def test_an_auth_token_is_required_when_configured(tmp_path: Path, redis_url: str) -> None:
    from aqnode.client import SyncClient
    from aqnode.errors import AqError

    with running_node(tmp_path, redis_url, auth_token="s3cret") as node:
        with SyncClient(node.address) as anonymous, pytest.raises(AqError) as caught:
            anonymous.enqueue(Incr(name="auth"))
        assert caught.value.code == "UNAUTHENTICATED"
        with SyncClient(node.address, auth_token="s3cret") as bus:
            assert bus.enqueue_and_wait(Incr(name="auth")).value == 1
        # The CLI takes the token from the config
        shown = subprocess.run(
            [sys.executable, "-m", "aqnode", "status", "--config", str(node.config_path)],
            capture_output=True,
            text=True,
            env=node_env(redis_url),
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr


def test_wal_disabled_is_refused_at_start(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path / "node.toml", redis_url, free_port(), wal={"enabled": False})
    result = serve_once(config, redis_url)
    assert result.returncode == 2
    assert "enabled = false is not supported" in result.stderr


def test_shards_that_keep_dying_at_start_stop_the_node_instead_of_looping(
    tmp_path: Path, redis_url: str
) -> None:
    config = write_config(
        tmp_path / "node.toml", redis_url, free_port(), handlers=["tests.handlers.shard_bomb"]
    )
    result = serve_once(config, redis_url, timeout=60)
    assert result.returncode == 2  # it never served: it could not start
    assert "keeps exiting" in result.stderr or "failed to start" in result.stderr, result.stderr
    assert result.stderr.count("restarting shard") <= 2 * 5, "a restart loop"
