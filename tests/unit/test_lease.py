"""A handler resumed after its node's lease ran out is stopped before its next step
(aqnode/shard/worker.py ``_Leased``): a paused node that wakes must not go on running a
handler whose entity may already run elsewhere."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest

from aqnode.shard.worker import LeaseOver, _Leased


def _pool(until: float = math.inf) -> Any:
    return SimpleNamespace(lease_until=until)


def test_a_handler_within_its_lease_runs_to_its_reply() -> None:
    async def handler() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return 7

    async def run() -> int:
        return await _Leased(handler(), _pool(time.monotonic() + 60))

    assert asyncio.run(run()) == 7


def test_a_handler_resumed_after_the_lease_is_stopped_before_its_next_step() -> None:
    steps: list[str] = []
    pool = _pool(time.monotonic() + 60)

    async def handler() -> None:
        steps.append("before")
        pool.lease_until = 0.0  # the node "was paused" while the handler awaited
        await asyncio.sleep(0.001)
        steps.append("after")  # never reached

    async def run() -> None:
        await _Leased(handler(), pool)

    with pytest.raises(LeaseOver):
        asyncio.run(run())
    assert steps == ["before"]


def test_a_handler_that_swallows_lease_over_gets_it_again_at_its_next_step() -> None:
    steps: list[str] = []
    pool = _pool(time.monotonic() + 60)

    async def handler() -> None:
        pool.lease_until = 0.0
        try:
            await asyncio.sleep(0.001)
        except LeaseOver:
            steps.append("swallowed")
        await asyncio.sleep(0.001)
        steps.append("went on")

    async def run() -> None:
        await _Leased(handler(), pool)

    with pytest.raises(LeaseOver):
        asyncio.run(run())
    assert steps == ["swallowed"]


def test_cancellation_reaches_the_handler_through_the_lease_guard() -> None:
    seen: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def run() -> None:
        task = asyncio.create_task(_wrap(handler()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def _wrap(coro: Any) -> None:
        await _Leased(coro, _pool(time.monotonic() + 60))

    asyncio.run(run())
    assert seen == ["cancelled"]
