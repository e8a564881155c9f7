"""The group's adoption and fence scripts against a real Redis: who may adopt a dead
member's log, that a member being adopted cannot rejoin, that the very process declared
dead is told to stop while a new process of its id joins afresh, and that a fenced log
takes no message and starts none."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from aqnode.wal import EnqueueEntry, LogKeys, LogState, WriteAheadLog
from aqnode.wal.group import BeingAdopted, Fenced, GroupStore
from aqnode.wal.keys import GroupKeys
from aqnode.wal.log import Outcome, Refused

TTL = 300


async def _store(url: str) -> tuple[aioredis.Redis, GroupStore]:
    client = aioredis.Redis.from_url(url)
    return client, GroupStore(client, GroupKeys("aq", "g"))


async def _beat(store: GroupStore, sid: str, token: str) -> object:
    return await store.heartbeat(sid, token, f"{sid}:1", 1, TTL)


def test_only_one_live_node_adopts_a_dead_member_and_a_dead_adopter_loses_the_right(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client, store = await _store(redis_url)
        for sid in ("a", "b", "d"):
            assert isinstance(await _beat(store, sid, f"t-{sid}"), int)
        assert not await store.adopt("d", "a", TTL, 30_000)  # d is alive
        await asyncio.sleep(TTL / 1000 + 0.05)
        await _beat(store, "a", "t-a")
        await _beat(store, "b", "t-b")
        assert await store.adopt("d", "a", TTL, 30_000)
        assert await store.adopt("d", "a", TTL, 30_000)  # a renewal
        assert not await store.adopt("d", "b", TTL, 30_000)  # a holds it and lives
        # d may not rejoin while it is being adopted
        assert isinstance(await _beat(store, "d", "t-d2"), BeingAdopted)
        await asyncio.sleep(TTL / 1000 + 0.05)  # a dies holding the right
        await _beat(store, "b", "t-b")
        assert await store.adopt("d", "b", TTL, 30_000)
        await store.adopted("d", "b")
        # The process that was declared dead is told so; a new process joins afresh.
        assert isinstance(await _beat(store, "d", "t-d"), Fenced)
        assert isinstance(await _beat(store, "d", "t-d2"), int)
        assert isinstance(await _beat(store, "d", "t-d2"), int)
        await client.aclose()

    asyncio.run(scenario())


def test_a_fenced_log_takes_no_message_and_starts_none(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        wal = WriteAheadLog(client, LogKeys("aq", "d"), entry_ttl_s=60, clock=time.time)
        await wal.start()

        async def commit(kind: str, items: list[object]) -> list[Outcome]:
            future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
            getattr(wal, kind)(items, future.set_result)
            return await future

        def entry(mid: str) -> EnqueueEntry:
            return EnqueueEntry(mid, "counter", "Incr", "c1", b"\x80", time.time())

        assert not isinstance((await commit("enqueue", [entry("m1")]))[0], Refused)
        await wal.fence("b")
        assert await commit("enqueue", [entry("m2")]) == [Refused(LogState.FENCED)]
        assert await commit("dispatch", ["m1"]) == [Refused(LogState.FENCED)]
        assert await client.exists(LogKeys("aq", "d").entry("m2")) == 0  # nothing written
        assert (await wal.read_entry("m1"))["state"] == LogState.ENQUEUED
        await wal.unfence()
        assert not isinstance((await commit("dispatch", ["m1"]))[0], Refused)
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_moved_message_may_come_back_through_adoption_only(redis_url: str) -> None:
    """A message moved out of a log (adoption) and later adopted back into it replaces
    its `moved` tombstone; a plain resend of the id is still refused (never run twice)."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        wal = WriteAheadLog(client, LogKeys("aq", "b"), entry_ttl_s=60, clock=time.time)
        await wal.start()

        async def enqueue(entry: EnqueueEntry) -> Outcome:
            future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
            wal.enqueue([entry], future.set_result)
            return (await future)[0]

        def entry(revive: bool) -> EnqueueEntry:
            return EnqueueEntry("m9", "counter", "Incr", "c9", b"\x80", time.time(), revive=revive)

        assert not isinstance(await enqueue(entry(False)), Refused)
        assert not isinstance((await wal.hand_over(["m9"], "a"))[0], Refused)
        assert await enqueue(entry(False)) == Refused(LogState.MOVED)  # a plain resend
        assert not isinstance(await enqueue(entry(True)), Refused)  # adopted back
        assert (await wal.read_entry("m9"))["state"] == LogState.ENQUEUED
        assert await enqueue(entry(True)) == Refused(LogState.ENQUEUED)  # live: known
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())
