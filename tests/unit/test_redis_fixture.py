"""The session Redis fixture itself: restarts, crash vs. persisted stop, freezing, wait_for."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.redis_fixture import RedisServer, async_wait_for, wait_for


def test_redis_url_is_empty_and_served(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set(b"left-behind", b"1")


def test_flushed_between_tests(redis_client: redis.Redis) -> None:
    assert redis_client.get(b"left-behind") is None
    redis_client.set(b"k", b"v")
    assert redis_client.get(b"k") == b"v"  # bytes: decode_responses is off


def test_crash_stop_then_restart_on_the_same_port(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    port, pid = redis_server.port, redis_server.pid
    redis_client.set(b"k", b"v")
    redis_server.stop()
    assert not redis_server.is_running()
    with pytest.raises(redis.ConnectionError):
        redis_client.ping()
    redis_server.start()
    assert (redis_server.port, redis_server.is_running()) == (port, True)
    assert redis_server.pid != pid
    assert redis_client.get(b"k") is None  # a crash loses everything


def test_persisted_stop_keeps_the_data(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.set(b"k", b"v")
    redis_server.stop(persist=True)
    redis_server.start()
    assert redis_client.get(b"k") == b"v"
    redis_server.stop()  # a later crash must not resurrect the saved snapshot
    redis_server.start()
    assert redis_client.get(b"k") is None


def test_frozen_server_times_out_then_recovers(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.freeze()
    try:
        with (
            redis.Redis.from_url(redis_url, socket_timeout=0.2) as client,
            pytest.raises(redis.TimeoutError),
        ):
            client.ping()
    finally:
        redis_server.thaw()
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_stopped_server_is_back_for_the_next_test(redis_server: RedisServer) -> None:
    redis_server.stop()  # the next test's redis_url must start it again


def test_next_test_gets_a_running_server(redis_client: redis.Redis) -> None:
    assert redis_client.ping()


def test_wait_for_returns_the_value_or_fails_with_the_message() -> None:
    calls = iter([0, 0, 7])
    assert wait_for(lambda: next(calls), timeout=1.0, interval=0.001) == 7
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, timeout=0.05, message="never true")


def test_async_wait_for_accepts_coroutines() -> None:
    async def ready() -> str:
        return "yes"

    async def scenario() -> None:
        assert await async_wait_for(ready, timeout=1.0) == "yes"
        with pytest.raises(AssertionError, match="nope"):
            await async_wait_for(lambda: 0, timeout=0.05, message="nope")

    asyncio.run(scenario())
