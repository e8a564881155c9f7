"""Shared fixtures: one real redis-server per session (implementation: tests/redis_fixture.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# The repository root on sys.path, so `tests.redis_fixture` and `aqnode` import the same way
# whether or not tests/ is a package and whether or not the package is installed.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.redis_cluster_fixture import RedisClusterServer, session_redis_cluster  # noqa: E402
from tests.redis_fixture import RedisServer, session_redis_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's redis-server; tests may stop(), start(), freeze() and thaw() it."""
    with session_redis_server(tmp_path_factory.mktemp("redis-server")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A three-master Redis Cluster, started for the first test that asks for it."""
    with session_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(params=["redis", "redis-cluster"])
def log_url(request: pytest.FixtureRequest) -> str | None:
    """Where the nodes keep their log and membership: None for the session's Redis (the
    one the test handlers record to), or an empty three-master Redis Cluster."""
    if request.param == "redis":
        return None
    cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return cluster.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a running, empty Redis (restarted if an earlier test stopped it)."""
    redis_server.ensure_running()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client returning bytes; closed after the test."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()
