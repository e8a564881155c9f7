"""ManagedRedis against a real redis-server: start, serve, persist, refuse to share, die."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from aqnode.util import managed_redis
from aqnode.util.managed_redis import ManagedRedis, url_for
from tests.redis_fixture import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def test_unix_socket_start_serve_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = ManagedRedis(tmp_path)
        url = await node.start()
        assert url == f"unix://{tmp_path.resolve()}/redis/redis.sock"
        assert node.is_running() and node.pid is not None
        assert url_for(tmp_path) == url
        with _client(url) as client:
            assert client.ping()
            config = client.config_get("appendonly")
            assert config == {"appendonly": "yes"} or config == {b"appendonly": b"yes"}
        assert oct((tmp_path / "redis" / "redis.sock").stat().st_mode & 0o777) == "0o700"
        await node.stop()
        assert not node.is_running()
        assert not (tmp_path / "redis" / "redis.sock").exists()

    asyncio.run(scenario())


def test_data_survives_a_restart_through_the_aof(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = ManagedRedis(tmp_path)
        with _client(await node.start()) as client:
            client.set(b"k", b"v")
        await node.stop()
        with _client(await node.start()) as client:
            assert client.get(b"k") == b"v"
        await node.stop()

    asyncio.run(scenario())


def test_tcp_port_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        node = ManagedRedis(tmp_path, port=port)
        url = await node.start()
        assert url == f"redis://127.0.0.1:{port}/0"
        assert url_for(tmp_path) == url  # the CLI cannot guess the port: it is recorded
        with _client(url) as client:
            assert client.ping()
        await node.stop()

    asyncio.run(scenario())


def test_url_for_defaults_to_the_socket(tmp_path: Path) -> None:
    assert url_for(tmp_path) == f"unix://{tmp_path.resolve()}/redis/redis.sock"


def test_stale_socket_file_is_removed(tmp_path: Path) -> None:
    sock_path = tmp_path / "redis" / "redis.sock"
    sock_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))  # closed without unlink: a file nobody listens on

    async def scenario() -> None:
        node = ManagedRedis(tmp_path)
        with _client(await node.start()) as client:
            assert client.ping()
        await node.stop()

    asyncio.run(scenario())


def test_second_node_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = ManagedRedis(tmp_path)
        await first.start()
        try:
            with pytest.raises(RuntimeError, match="must not share one data_dir"):
                await ManagedRedis(tmp_path).start()
            assert first.is_running()
        finally:
            await first.stop()

    asyncio.run(scenario())


def test_a_live_server_on_the_socket_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(managed_redis, "_ORPHAN_GRACE", 0.1)
    sock_path = tmp_path / "redis" / "redis.sock"
    sock_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock_path))
        listener.listen()
        with pytest.raises(RuntimeError, match=re.escape(str(sock_path))):
            asyncio.run(ManagedRedis(tmp_path).start())
    assert sock_path.exists()  # someone else's socket is left alone


def test_missing_executable_says_how_to_install(tmp_path: Path) -> None:
    node = ManagedRedis(tmp_path, executable="aqnode-no-such-redis-server")
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        asyncio.run(node.start())


def test_startup_failure_shows_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: fake config error' >&2\nexit 1\n")
    fake.chmod(0o755)
    node = ManagedRedis(tmp_path, executable=str(fake))
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1.*fake config error"):
        asyncio.run(node.start())
    assert not node.is_running()


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie no init reaped yet


_NODE = """
import asyncio, sys
from pathlib import Path
from aqnode.util.managed_redis import ManagedRedis

async def main() -> None:
    node = ManagedRedis(Path(sys.argv[1]))
    await node.start()
    print(node.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_redis_dies_when_the_node_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    node = subprocess.Popen(
        [sys.executable, "-c", _NODE, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    redis_pid = 0
    try:
        assert node.stdout is not None
        redis_pid = int(node.stdout.readline())
        node.kill()
        node.wait(10)
        wait_for(lambda: _dead(redis_pid), message="redis-server outlived its killed node")
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
        if node.stdout is not None:
            node.stdout.close()
        if redis_pid and not _dead(redis_pid):
            os.kill(redis_pid, 9)
