"""An entry's small immutable part travels and is stored as one packed field (``body``),
its payload in a field of its own and its id only in its key; every reader spells them
out as the fields an entry written field by field has: a log in Redis from an earlier
aqnode (or a tombstone) reads the same as a new one, in recovery, adoption and the
dead-letter queue. Small values keep Redis's compact hash encoding."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from aqnode.wal import EnqueueEntry, LogKeys, WriteAheadLog, entry_body
from aqnode.wal.dlq import DeadLetterQueue
from aqnode.wal.log import Applied, Outcome

NOW = 1_700_000_000.25
PAYLOAD = msgspec.msgpack.encode({"id": "c1", "amount": 3})


async def _enqueue(wal: WriteAheadLog, entries: list[EnqueueEntry]) -> list[Outcome]:
    future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
    wal.enqueue(entries, future.set_result)
    return await asyncio.wait_for(future, 30.0)


def test_a_packed_entry_and_one_written_field_by_field_read_the_same(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0)
        keys = LogKeys("aq", "body")
        wal = WriteAheadLog(client, keys, entry_ttl_s=60, clock=lambda: NOW)
        await wal.start()
        new = EnqueueEntry("new-1", "counter", "Incr", "c1", PAYLOAD, NOW, dispatch=True)
        [outcome] = await _enqueue(wal, [new])
        assert isinstance(outcome, Applied)
        stored = await client.hgetall(keys.entry("new-1"))
        # the immutable part is one field, the payload another, the id is the key's
        assert set(stored) == {
            b"state",
            b"body",
            b"payload",
            b"seq",
            b"attempts",
            b"dispatched_at",
        }
        assert await client.object("encoding", keys.entry("new-1")) == b"listpack"

        # the same message as an earlier aqnode wrote it, field by field, next in the log
        await client.hset(
            keys.entry("old-1"),
            mapping={
                "state": "enqueued",
                "id": "old-1",
                "entity_type": "counter",
                "message": "Incr",
                "entity_id": "c1",
                "payload": PAYLOAD,
                "enqueued_at": repr(NOW),
                "seq": outcome.seq + 1,
                "attempts": 0,
            },
        )
        await client.zadd(keys.live, {"old-1": outcome.seq + 1})

        read = await wal.live_entries()
        assert [e["id"] for e in read] == ["new-1", "old-1"]
        common = ("entity_type", "message", "entity_id", "payload", "enqueued_at")
        for entry in read:
            assert {name: entry[name] for name in common} == {
                "entity_type": "counter",
                "message": "Incr",
                "entity_id": "c1",
                "payload": PAYLOAD,
                "enqueued_at": repr(NOW),
            }
            assert entry_body.BODY not in entry
        assert (await wal.read_entry("new-1"))["state"] == "dispatched"
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_the_dead_letter_queue_reads_a_packed_entry(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    keys = LogKeys("aq", "body-dlq")
    body = entry_body.pack("counter", "Incr", "c7", NOW)
    error = msgspec.msgpack.encode({"code": "HANDLER_ERROR", "message": "boom"})
    sync.hset(
        keys.entry("dead-1"),
        mapping={
            "state": "failed",
            "body": body,
            "payload": PAYLOAD,
            "seq": 1,
            "attempts": 3,
            "error": error,
            "reason": "exhausted",
            "dead_lettered_at": repr(NOW + 1),
        },
    )
    sync.zadd(keys.dlq, {"dead-1": NOW + 1})
    sync.sadd(keys.nodes, "body-dlq")
    [letter] = [d for d in DeadLetterQueue(sync, "aq", 60).entries() if d.id == "dead-1"]
    assert (letter.entity_type, letter.entity_id, letter.message) == ("counter", "c7", "Incr")
    assert letter.payload == {"id": "c1", "amount": 3} and letter.payload_bytes == PAYLOAD
    assert letter.enqueued_at == NOW and letter.attempts == 3 and letter.reason == "exhausted"
    sync.close()


@pytest.mark.parametrize("body", [b"", b"\xc1", msgspec.msgpack.encode(["too", "short"])])
def test_a_body_that_is_not_ours_is_an_error_not_a_guess(body: bytes) -> None:
    fields: dict[str, Any] = {"state": "enqueued", "body": body}
    with pytest.raises(msgspec.DecodeError):
        entry_body.expand(fields, "m1")
