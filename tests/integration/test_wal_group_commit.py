"""The log's group commit against a real Redis: every request gets exactly one outcome, in
the order requests were handed in, with at most MAX_IN_FLIGHT commits unanswered; flush()
returns only once everything handed in is answered; a Redis that goes away fails what
was in flight and the log reconnects for what comes next."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from aqnode import errors
from aqnode.wal import EnqueueEntry, LogKeys, WriteAheadLog
from aqnode.wal.log import MAX_IN_FLIGHT, Applied, Failed, Outcome
from tests.redis_fixture import RedisServer


def _entry(mid: str) -> EnqueueEntry:
    return EnqueueEntry(mid, "counter", "Incr", "c1", b"\x80", time.time())


async def _log(url: str) -> tuple[aioredis.Redis, WriteAheadLog]:
    client = aioredis.Redis.from_url(url, socket_timeout=5.0)
    wal = WriteAheadLog(client, LogKeys("aq", "gc"), entry_ttl_s=60, clock=time.time)
    await wal.start()
    return client, wal


def test_requests_handed_in_over_many_iterations_commit_in_order_and_flush_waits(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client, wal = await _log(redis_url)
        answered: list[tuple[int, list[Outcome]]] = []
        most_in_flight = 0

        def done(i: int) -> object:
            def record(outcomes: list[Outcome]) -> None:
                nonlocal most_in_flight
                most_in_flight = max(most_in_flight, wal._in_flight)
                answered.append((i, outcomes))

            return record

        for i in range(300):
            wal.enqueue([_entry(f"m{i}-a"), _entry(f"m{i}-b")], done(i))
            if i % 7 == 0:
                await asyncio.sleep(0)  # some requests alone, some gathered
        await wal.flush()
        assert [i for i, _ in answered] == list(range(300))  # each once, in hand-in order
        seqs = [o.seq for _, outcomes in answered for o in outcomes if isinstance(o, Applied)]
        assert len(seqs) == 600 and seqs == sorted(seqs)  # the log's order is hand-in order
        assert 1 <= most_in_flight <= MAX_IN_FLIGHT
        assert wal.commits < 300  # requests of one loop iteration share a commit
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_redis_gone_fails_what_is_in_flight_and_the_log_reconnects_after(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario() -> None:
        client, wal = await _log(redis_url)

        async def commit(mid: str) -> Outcome:
            future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
            wal.enqueue([_entry(mid)], future.set_result)
            return (await asyncio.wait_for(future, 30.0))[0]

        assert isinstance(await commit("before"), Applied)
        redis_server.stop()
        try:
            gone = await commit("while-gone")
            assert isinstance(gone, Failed) and gone.error.code == errors.REDIS_UNAVAILABLE
            await asyncio.wait_for(wal.flush(), 30.0)  # nothing left owed
        finally:
            redis_server.start()
        # A new connection for what comes next; handed in together, answered in order.
        futures = [asyncio.get_running_loop().create_future() for _ in range(3)]
        for i, future in enumerate(futures):
            wal.enqueue([_entry(f"after-{i}")], future.set_result)
        outcomes = [(await asyncio.wait_for(f, 30.0))[0] for f in futures]
        assert all(isinstance(o, Applied) for o in outcomes), outcomes
        assert [o.seq for o in outcomes if isinstance(o, Applied)] == sorted(
            o.seq for o in outcomes if isinstance(o, Applied)
        )
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_commit_that_cannot_be_encoded_fails_its_requests_and_the_log_goes_on(
    redis_url: str,
) -> None:
    """An item RESP cannot carry (a bug of ours, never user input: payloads arrive as
    bytes) fails the commit it is in, nothing of it written; later commits go through,
    and no request is left without an outcome or stuck behind it."""

    async def scenario() -> None:
        client, wal = await _log(redis_url)
        loop = asyncio.get_running_loop()
        before, bad, after = (loop.create_future() for _ in range(3))
        wal.enqueue([_entry("ok-1")], before.set_result)
        await asyncio.wait_for(before, 30.0)
        broken = _entry("broken")
        broken.payload = object()  # type: ignore[assignment]
        wal.enqueue([broken], bad.set_result)
        outcome = (await asyncio.wait_for(bad, 30.0))[0]
        assert isinstance(outcome, Failed) and "TypeError" in outcome.error.message
        wal.enqueue([_entry("ok-2")], after.set_result)
        assert isinstance((await asyncio.wait_for(after, 30.0))[0], Applied)
        await asyncio.wait_for(wal.flush(), 30.0)  # nothing is left owed
        assert await client.exists(LogKeys("aq", "gc").entry("broken")) == 0
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_redis_that_stops_answering_fails_the_commits_owed_and_the_log_goes_on(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Redis frozen mid-call (SIGSTOP: the socket stays open, nothing comes back): the
    commits written meanwhile each get one failed outcome at the socket time-out, none
    hangs; once Redis answers again, the next commit goes through."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)
        wal = WriteAheadLog(client, LogKeys("aq", "gc"), entry_ttl_s=60, clock=time.time)
        await wal.start()
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        wal.enqueue([_entry("before-freeze")], first.set_result)
        assert isinstance((await asyncio.wait_for(first, 30.0))[0], Applied)
        redis_server.freeze()
        try:
            owed = [loop.create_future() for _ in range(5)]
            for i, future in enumerate(owed):
                wal.enqueue([_entry(f"frozen-{i}")], future.set_result)
                await asyncio.sleep(0)  # several commits, some in flight, some gathering
            outcomes = [(await asyncio.wait_for(f, 30.0))[0] for f in owed]
            assert all(isinstance(o, Failed) for o in outcomes), outcomes
            assert all(
                o.error.code == errors.REDIS_UNAVAILABLE for o in outcomes if isinstance(o, Failed)
            )
        finally:
            redis_server.thaw()
        after = loop.create_future()
        wal.enqueue([_entry("after-thaw")], after.set_result)
        assert isinstance((await asyncio.wait_for(after, 30.0))[0], Applied)
        await asyncio.wait_for(wal.flush(), 30.0)
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_lone_enqueue_on_an_idle_log_is_written_before_the_loop_turns(redis_url: str) -> None:
    """SPEC 6: a lone message commits at once. An enqueue (or a finish) that finds nothing
    pending or in flight is written from within the call; what the same iteration hands
    in after it waits for the next commit, and every outcome still comes in order. Other
    kinds (a dispatch here) wait for the iteration's end, as before."""

    async def scenario() -> None:
        client, wal = await _log(redis_url)
        order: list[str] = []

        def done(name: str) -> object:
            return lambda outcomes: order.append(name)

        wal.enqueue([_entry("opens")], done("opens"))  # opens the log's connection
        await wal.flush()
        wal.enqueue([_entry("lone")], done("lone"))
        assert wal._in_flight == 1  # written: no loop turn taken
        wal.enqueue([_entry("next")], done("next"))
        assert wal._in_flight == 1  # queued behind it
        await wal.flush()
        assert order == ["opens", "lone", "next"] and wal.commits == 3

        wal.dispatch(["lone"], done("dispatch"))
        assert wal._in_flight == 0  # not a kind that goes ahead: it waits for the tick
        await wal.flush()
        assert order[-1] == "dispatch"
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())


def test_commits_go_by_sha_and_a_script_cache_flushed_under_them_costs_nothing(
    redis_url: str,
) -> None:
    """Commits go as EVALSHA, the log's connection loading the scripts first. SCRIPT
    FLUSH from another connection, 23 times, each while commits are in flight: every
    request is still applied, once (the entries are there and nothing was refused as a
    duplicate), in hand-in order (the sequence numbers), and no caller hears of it.
    (Flushes faster than the log can load its scripts again, a round trip or two each,
    would end its connection after MAX_RESENDS rounds, like an outage.)"""

    async def scenario() -> None:
        client, wal = await _log(redis_url)
        other = aioredis.Redis.from_url(redis_url, socket_timeout=5.0)
        await client.config_resetstat()
        answered: list[tuple[int, list[Outcome]]] = []
        for i in range(200):
            wal.enqueue(
                [_entry(f"f{i}-a"), _entry(f"f{i}-b")],
                lambda outcomes, i=i: answered.append((i, outcomes)),
            )
            if i % 9 == 0:
                await other.script_flush()  # lands between, before or under commits
            if i % 4 == 0:
                await asyncio.sleep(0)
            if i % 9 == 4:
                await asyncio.wait_for(wal.flush(), 30.0)  # the scripts are back
        await asyncio.wait_for(wal.flush(), 30.0)
        assert [i for i, _ in answered] == list(range(200))
        outcomes = [o for _, batch in answered for o in batch]
        assert all(isinstance(o, Applied) for o in outcomes), [
            o for o in outcomes if not isinstance(o, Applied)
        ][:3]
        seqs = [o.seq for o in outcomes if isinstance(o, Applied)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 400
        stats = await client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] >= wal.commits
        assert "cmdstat_eval" not in stats  # no script source is sent with a commit
        await wal.close()
        await client.aclose()
        await other.aclose()

    asyncio.run(scenario())


def test_flush_waits_for_what_was_handed_in_before_it_not_for_an_idle_moment(
    redis_url: str,
) -> None:
    """A draining node flushes its log while its shards keep finishing messages: flush()
    must end once what was handed in before it is answered, even if more keeps coming
    (it used to wait for a moment with nothing pending, which a steady stream of
    commits may never leave)."""

    async def scenario() -> None:
        client, wal = await _log(redis_url)
        loop = asyncio.get_running_loop()
        before: list[asyncio.Future[list[Outcome]]] = []
        for i in range(5):
            future: asyncio.Future[list[Outcome]] = loop.create_future()
            wal.enqueue([_entry(f"before-{i}")], future.set_result)
            before.append(future)
        flushing = loop.create_task(wal.flush())
        after = 0
        while not flushing.done():  # a commit handed in at every turn of the loop
            assert after < 10_000, "flush() waited for the stream to stop"
            wal.enqueue([_entry(f"after-{after}")], lambda _outcomes: None)
            after += 1
            await asyncio.sleep(0)
        assert all(f.done() for f in before)
        assert all(isinstance(f.result()[0], Applied) for f in before)
        assert wal._pending or wal._in_flight  # the stream was still going
        await asyncio.wait_for(wal.flush(), 30.0)  # and a last flush ends it all
        assert not (wal._pending or wal._in_flight)
        await wal.close()
        await client.aclose()

    asyncio.run(scenario())
