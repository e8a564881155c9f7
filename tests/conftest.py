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

from tests.redis_fixture import RedisServer, session_redis_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's redis-server; tests may stop(), start(), freeze() and thaw() it."""
    with session_redis_server(tmp_path_factory.mktemp("redis-server")) as server:
        yield server


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
