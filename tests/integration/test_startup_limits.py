"""Start-up failures that used to hang or mislead: one `aqnode: ` line and exit 2.

A handler module that never finishes importing, one that ends its process while it is
imported, a taken `metrics_listen` port, and a `listen` address that is not of this host.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.test_startup import serve_once
from tests.node_fixture import node_env, write_config
from tests.redis_fixture import free_port


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("aqnode: ")]
    assert len(lines) == 1, stderr
    assert stderr.strip().splitlines()[-1] == lines[0], stderr
    return lines[0]


def test_a_handler_module_that_never_finishes_importing_stops_the_start(
    tmp_path: Path, redis_url: str
) -> None:
    # The module sleeps for ever at import; the shard's bound is made short for the test
    (tmp_path / "hangs_at_import.py").write_text("import time\ntime.sleep(100000)\n")
    config = write_config(
        tmp_path / "node.toml",
        redis_url,
        free_port(),
        handlers=["hangs_at_import"],
        shards=1,
        shard_start_timeout_ms=500,
    )
    result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    line = _last_line(result.stderr)
    assert line.startswith("aqnode: shard 0 cannot serve: "), line
    assert "shard_start_timeout_ms" in line and "importing its handler modules" in line, line
    assert "blocks or loops while it is imported" in line, line


def test_a_handler_module_that_exits_at_import_is_not_said_to_have_printed_an_error(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "exits_at_import.py").write_text("import os\nos._exit(3)\n")
    config = write_config(
        tmp_path / "node.toml", redis_url, free_port(), handlers=["exits_at_import"], shards=1
    )
    result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    line = _last_line(result.stderr)
    assert "see its error above" not in line, line
    assert line.startswith("aqnode: shard 0 cannot serve: it exited with code 3 while importing")
    assert "os._exit()" in line, line


def test_a_taken_metrics_port_names_the_key_and_the_address(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(
            tmp_path / "node.toml", redis_url, free_port(), shards=1, metrics_listen=metrics
        )
        result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aqnode: cannot listen on {metrics}: "), lines[0]
    assert "[Errno" not in lines[0], lines[0]
    assert "`metrics_listen`" in lines[0], lines[0]
    # checked before anything starts, like `listen`: no data_dir, no shard
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("host", ["10.255.255.1", "999.1.1.1"])
def test_a_listen_address_not_of_this_host_is_not_called_a_taken_port(
    tmp_path: Path, redis_url: str, host: str
) -> None:
    config = write_config(tmp_path / "node.toml", redis_url, free_port(), shards=1)
    text = config.read_text().replace('listen = "127.0.0.1:', f'listen = "{host}:')
    config.write_text(text)
    result = serve_once(config, node_env(redis_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aqnode: cannot listen on {host}:"), lines
    assert "is that an address of this host?" in lines[0], lines[0]
    assert "using that port" not in lines[0], lines[0]
