"""A node whose Redis is found through Redis Sentinel (SPEC section 9: a Sentinel URL)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.handlers.testkit import Get, Incr
from tests.node_fixture import running_node
from tests.redis_fixture import RedisServer, free_port, wait_for


@pytest.fixture
def sentinel(redis_server: RedisServer, redis_url: str, tmp_path: Path) -> Iterator[int]:
    """A real redis-sentinel monitoring the session's Redis as `main`; yields its port."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)

        def knows_master() -> bool:
            try:
                return client.sentinel_get_master_addr_by_name("main") is not None
            except redis.RedisError:
                return False

        wait_for(knows_master, message="redis-sentinel did not come up")
        client.close()
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def test_a_node_finds_its_redis_through_sentinel(
    tmp_path: Path, sentinel: int, redis_url: str, redis_client: redis.Redis
) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel}/main/0"
    env = {"AQ_TEST_REDIS_URL": redis_url}  # where the test handlers record
    with running_node(tmp_path / "n", None, env=env, redis={"url": url}) as node:
        with node.client() as bus:
            assert bus.enqueue_and_wait(Incr(name="via-sentinel")).value == 1
            assert bus.enqueue_and_wait(Get(name="via-sentinel")) == 1
        assert redis_client.exists("aq:{test-node}:seq")
