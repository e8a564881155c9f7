"""A shared node for the integration tests that do not need a node of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node_fixture import Node, running_node
from tests.redis_fixture import RedisServer


@pytest.fixture(scope="module")
def node(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A 2-shard node on the session's Redis, shared by one test module."""
    redis_server.ensure_running()
    path: Path = tmp_path_factory.mktemp("node")
    with running_node(
        path, redis_server.url, entities={"counter": {"worker_idle_timeout_ms": 300}}
    ) as n:
        yield n


@pytest.fixture
def fresh(node: Node, redis_url: str) -> Node:
    """The shared node, with Redis flushed for this test."""
    return node
