"""The log's indexes against a real Redis. enqueue.lua, finish.lua and cleanup.lua write
the live, terminal and dead-letter indexes with one variadic call per batch rather than
one per message: every message must still land in exactly the index its state says,
with its score, whatever the batch mixes (ids sent twice, refused transitions, outcomes
that dead-letter), and cleanup must unlist every id it was given even past one call's
worth."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from aqnode.wal import EnqueueEntry, LogKeys, WriteAheadLog
from aqnode.wal.log import MAX_SCRIPT_BATCH, Applied, FinishEntry, LogState, Outcome, Refused

NOW = 1_700_000_000.0


def _entry(mid: str, dispatch: bool = True) -> EnqueueEntry:
    return EnqueueEntry(mid, "counter", "Incr", mid, b"\x80", NOW, dispatch=dispatch)


async def _commit(send: Any, items: Sequence[Any]) -> list[Outcome]:
    future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
    send(items, future.set_result)
    return await asyncio.wait_for(future, 30.0)


def test_a_full_batch_lands_each_message_in_the_index_its_state_says(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0)
        keys = LogKeys("aq", "ix")
        wal = WriteAheadLog(client, keys, entry_ttl_s=60, clock=lambda: NOW)
        await wal.start()
        n = MAX_SCRIPT_BATCH + 7  # two EVALs in one commit, the first one full
        ids = [f"m{i}" for i in range(n)]
        # ids[0] twice in one batch: the second is refused with its state, listed once
        first = await _commit(wal.enqueue, [_entry(i) for i in ids] + [_entry(ids[0])])
        assert all(isinstance(o, Applied) for o in first[:n])
        assert first[n] == Refused(LogState.DISPATCHED)
        live = _members(await client.zrange(keys.live, 0, -1, withscores=True))
        assert live == {i: o.seq for i, o in zip(ids, first, strict=False)}  # type: ignore[union-attr]

        # a third completed, a third dead-lettered (no attempts left), a third left running;
        # plus one id finished twice in the batch: the second is refused and changes nothing
        completed, dead, running = ids[0::3], ids[1::3], ids[2::3]
        finishes = [FinishEntry(i, LogState.COMPLETED, b"r", b"") for i in completed]
        finishes += [FinishEntry(i, LogState.FAILED, b"", b"e", dead=True) for i in dead]
        finishes.append(FinishEntry(completed[0], LogState.FAILED, b"", b"late", dead=True))
        outcomes = await _commit(wal.finish, finishes)
        assert all(isinstance(o, Applied) for o in outcomes[:-1])
        assert outcomes[-1] == Refused(LogState.COMPLETED)

        assert set(_members(await client.zrange(keys.live, 0, -1, withscores=True))) == set(running)
        assert _members(await client.zrange(keys.done, 0, -1, withscores=True)) == dict.fromkeys(
            completed, NOW
        )
        assert _members(await client.zrange(keys.dlq, 0, -1, withscores=True)) == dict.fromkeys(
            dead, NOW
        )
        dead_entry = await client.hgetall(keys.entry(dead[0]))
        assert dead_entry[b"state"] == b"failed" and dead_entry[b"reason"] == b"exhausted"
        assert await client.ttl(keys.entry(dead[0])) == -1  # a dead letter keeps no TTL
        assert 0 < await client.ttl(keys.entry(completed[0])) <= 60
        assert (await client.hgetall(keys.entry(completed[0])))[b"state"] == b"completed"

        # cleanup past one ZREM's worth: every id unlisted, terminal entries deleted
        extra = [f"x{i}" for i in range(2500)]
        await client.zadd(keys.done, dict.fromkeys(extra, NOW))
        deleted = await wal.cleanup(older_than=NOW + 1, limit=5000)
        assert deleted == len(completed) + len(extra)  # missing entries count as gone
        assert await client.zcard(keys.done) == 0
        assert await client.exists(*(keys.entry(i) for i in completed)) == 0
        assert await client.zcard(keys.live) == len(running)  # untouched
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def _members(raw: Any) -> dict[str, float]:
    return {k.decode(): v for k, v in raw}
