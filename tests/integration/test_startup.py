"""Start-up is one line and an exit code, and user code never runs in the supervisor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aqnode.errors import HandlerError
from tests.handlers.user_code import Checked
from tests.node_fixture import node_env, running_node, write_config
from tests.redis_fixture import free_port


def serve_once(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=config.parent,
    )


def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, redis_url: str) -> None:
    with running_node(tmp_path / "first", redis_url) as first:
        port = int(first.address.rsplit(":", 1)[1])
        config = write_config(tmp_path / "node.toml", redis_url, port, server_id="second")
        result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aqnode: cannot listen"), result.stderr
    assert not (tmp_path / "data").exists(), "nothing may start on a taken port"


def test_a_data_dir_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with running_node(tmp_path, None) as first:  # the managed Redis locks data_dir
        config = write_config(tmp_path / "second.toml", None, free_port(), server_id="second")
        result = serve_once(config, node_env(None))
        assert first.proc.poll() is None
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_dir" in lines[0] and "Traceback" not in result.stderr


def test_a_data_dir_in_use_is_refused_with_an_external_redis_too(
    tmp_path: Path, redis_url: str
) -> None:
    """The review's case: with `[redis] url` there is no managed Redis to lock data_dir,
    and a second node on it recovered the first one's live log as if it had crashed."""
    with running_node(tmp_path, redis_url) as first:
        config = write_config(tmp_path / "second.toml", redis_url, free_port())
        result = serve_once(config, node_env(redis_url))
        assert first.proc.poll() is None
        with first.client() as bus:  # the first node serves on, untouched
            assert bus.status().role == "standalone"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another node" in lines[0], result.stderr
    assert f"pid {first.proc.pid}" in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["a-file", "under-a-file"])
def test_a_data_dir_that_cannot_be_made_is_one_line_and_exit_2(
    tmp_path: Path, redis_url: str, kind: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    data_dir = blocker if kind == "a-file" else blocker / "data"
    config = write_config(tmp_path / "node.toml", redis_url, free_port(), data_dir=str(data_dir))
    result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aqnode: data_dir"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_handler_module_is_named_in_one_line(tmp_path: Path, redis_url: str) -> None:
    config = write_config(
        tmp_path / "node.toml", redis_url, free_port(), handlers=["no.such.module"], shards=1
    )
    result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("aqnode: ") and "'no.such.module' was not found" in last, last
    assert "importlib" not in result.stderr and "Traceback" not in result.stderr


def test_user_code_runs_only_in_the_shards(tmp_path: Path, redis_url: str) -> None:
    imports = tmp_path / "imports.txt"
    env = {"AQ_TEST_IMPORTS": str(imports)}
    with running_node(
        tmp_path / "node", redis_url, env, handlers=["tests.handlers.user_code"]
    ) as node:
        shard_pids = set(node.shard_pids())
        with node.client() as bus:
            assert bus.enqueue_and_wait(Checked(key="a", amount=5)) == 5
            # A __post_init__ runs where the message is decoded to run: in the shard
            with pytest.raises(HandlerError) as caught:
                bus.enqueue_and_wait_raw(
                    "checked", "Checked", "a", {"key": "a", "amount": 5, "how": "raise"}
                )
            assert "refused" in caught.value.remote_message
            with pytest.raises(HandlerError) as exited:
                bus.enqueue_and_wait_raw(
                    "checked", "Checked", "a", {"key": "a", "amount": 6, "how": "exit"}
                )
            assert exited.value.remote_type == "SystemExit"
            assert bus.enqueue_and_wait(Checked(key="a", amount=7)) == 7
        assert set(node.shard_pids()) == shard_pids, "a shard was restarted"
        imported_by = {int(line) for line in imports.read_text().split()}
        assert node.pid not in imported_by, "the supervisor imported a handler module"
        assert imported_by == shard_pids
