"""Handlers that do real I/O, for the ``realio`` scenario: entity type ``bench_io``.

Loaded by the node under test (``handlers = ["bench.io_handlers"]``) and, for the same
work, by the hash-partitioned lists baseline's workers (``bench/lists_baseline.py``); both
run the very same handler body (``work``) on the very same messages.

- ``Deposit``: a fire-and-forget command. Its body does two awaited ``redis.asyncio``
  pipelines (``transaction=False``) against the benchmark's Redis: ``HINCRBY`` the
  entity's balance and ``RPUSH`` its ``seq`` to the entity's history, then ``SET`` the
  last ``seq`` and ``EXPIRE`` the three keys (so that repeated runs do not fill Redis).
  The history list is the order the deposits really ran in, kept outside the process:
  the benchmark reads it back after a run (``check_history``).
- ``IoMarker``: sent last to an entity with ``enqueue_and_wait``; returns (and forgets)
  the entity's tally in this shard, like ``bench.handlers.Marker``.

The Redis client is made lazily, once per process (each shard process, each baseline
worker process) on first use: one ``redis.asyncio.Redis`` over a
``BlockingConnectionPool`` of ``AQBENCH_IO_POOL`` connections (``0``: a
``ConnectionPool`` with no limit), connected to ``AQBENCH_IO_REDIS_URL``. The benchmark puts both in
the node's environment; ``aqnode serve`` passes its environment on to the shards. A
bounded blocking pool makes the node's hundreds of concurrent entity workers queue for a
connection instead of opening one each.

This module must not import ``bench.handlers`` (nor ``bench.workload``): the node would
then register that module's handlers too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import msgspec
import redis.asyncio as aioredis

from aqnode import Command, Context, Query, entity_type, handles

ENTITY_TYPE = "bench_io"
ENV_URL = "AQBENCH_IO_REDIS_URL"
ENV_POOL = "AQBENCH_IO_POOL"
ENV_PREFIX = "AQBENCH_IO_PREFIX"
DEFAULT_POOL = 32  #: connections per process
KEY_TTL_S = 600  #: the handler's keys expire: a benchmark's data is not kept
POOL_WAIT_S = 60.0  #: how long a handler may wait for a pooled connection
UNBOUNDED = 2**31 - 1  #: "no limit" for redis-py's ConnectionPool (its default is 100)


class IoTally(msgspec.Struct, array_like=True):
    deposits: int = 0  #: Deposits run since the entity's last IoMarker
    out_of_order: int = 0  #: of those, how many had a seq not above one run before
    overlaps: int = 0  #: how many started while another Deposit of the entity was running
    last_seq: int = -1


@entity_type(ENTITY_TYPE, id_field="id")
class Deposit(Command[None]):
    id: str
    seq: int = 0
    amount: int = 1


@entity_type(ENTITY_TYPE, id_field="id")
class IoMarker(Query[IoTally]):
    id: str


# ---- the per-process Redis client ----------------------------------------------------------

_settings: dict[str, str | int] = {}
_client: aioredis.Redis | None = None


def configure(redis_url: str, pool_size: int = DEFAULT_POOL, prefix: str = "io:") -> None:
    """Set where ``work`` writes (instead of the environment); before its first call."""
    _settings.update(url=redis_url, pool=pool_size, prefix=prefix)


def _setting(key: str, env: str, default: str | None) -> str:
    value = _settings.get(key, os.environ.get(env, default))
    if value is None:
        raise RuntimeError(f"bench.io_handlers: {env} is not set (the Redis to write to)")
    return str(value)


def make_pool(redis_url: str, size: int) -> aioredis.ConnectionPool:
    """A blocking pool of ``size`` connections, or an unbounded one for ``size`` 0. Its
    connections are named ``connection_name()``, so the benchmark can count them.

    Not redis-py's default pool: that one (``ConnectionPool``, what ``Redis.from_url``
    makes) holds at most 100 connections and *raises* ``MaxConnectionsError`` past them
    instead of waiting; a shard with over 100 entities awaiting Redis at once then fails
    (and dead-letters) their messages."""
    name = connection_name(os.getpid())
    if size <= 0:
        return aioredis.ConnectionPool.from_url(
            redis_url, max_connections=UNBOUNDED, client_name=name
        )
    return aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=size, timeout=POOL_WAIT_S, client_name=name
    )


def connection_name(pid: int) -> str:
    """The Redis client name of process ``pid``'s handler connections."""
    return f"bench_io-{pid}"


def client() -> aioredis.Redis:
    """This process' client, made on first use: on the running loop, after any fork."""
    global _client
    if _client is None:
        url = _setting("url", ENV_URL, None)
        size = int(_setting("pool", ENV_POOL, str(DEFAULT_POOL)))
        _client = aioredis.Redis(connection_pool=make_pool(url, size))
    return _client


async def close() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        await _client.connection_pool.disconnect()
        _client = None


def keys(entity: str, prefix: str | None = None) -> tuple[str, str, str]:
    """The entity's balance hash, history list and last-seq string."""
    p = prefix if prefix is not None else _setting("prefix", ENV_PREFIX, "io:")
    return f"{p}balance:{entity}", f"{p}history:{entity}", f"{p}last:{entity}"


# ---- the handler body ----------------------------------------------------------------------


async def work(msg: Deposit) -> None:
    """The handler body both the node and the baseline run: two awaited pipelines."""
    balance, history, last = keys(msg.id)
    redis = client()
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(balance, "balance", msg.amount)
    pipe.rpush(history, msg.seq)
    await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    pipe.set(last, msg.seq, ex=KEY_TTL_S)
    pipe.expire(balance, KEY_TTL_S)
    pipe.expire(history, KEY_TTL_S)
    await pipe.execute()


#: the tally per entity id since that entity's last IoMarker (in this shard process)
TALLIES: dict[str, IoTally] = {}
#: entity ids with a Deposit running right now (in this shard process)
RUNNING: set[str] = set()


@handles(Deposit)
async def deposit(msg: Deposit, ctx: Context) -> None:
    tally = TALLIES.get(msg.id)
    if tally is None:
        tally = TALLIES[msg.id] = IoTally()
    if msg.id in RUNNING:
        tally.overlaps += 1
    if msg.seq <= tally.last_seq:
        tally.out_of_order += 1
    tally.last_seq = max(tally.last_seq, msg.seq)
    tally.deposits += 1
    RUNNING.add(msg.id)
    try:
        await work(msg)
    finally:
        RUNNING.discard(msg.id)


@handles(IoMarker)
async def io_marker(msg: IoMarker, ctx: Context) -> IoTally:
    return TALLIES.pop(msg.id, None) or IoTally()


# ---- checking what the handlers wrote ------------------------------------------------------


async def check_history(
    redis: aioredis.Redis,
    expected: Iterable[tuple[str, list[int], int]],
    prefix: str = "io:",
    chunk: int = 500,
) -> dict[str, float]:
    """Compare what the handlers wrote with what was sent, per entity: ``expected`` is
    (entity, its seqs in send order, its total amount). Counts entities whose history
    list is not exactly their seqs in send order, and whose balance is off."""
    bad_history = bad_balance = 0
    items = list(expected)
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        pipe = redis.pipeline(transaction=False)
        for entity, _, _ in part:
            balance, history, _ = keys(entity, prefix)
            pipe.lrange(history, 0, -1)
            pipe.hget(balance, "balance")
        replies = await pipe.execute()
        for i, (_, seqs, amount) in enumerate(part):
            got = [int(v) for v in replies[2 * i]]
            if got != seqs:
                bad_history += 1
            if int(replies[2 * i + 1] or 0) != amount:
                bad_balance += 1
    return {"history_bad": float(bad_history), "balance_bad": float(bad_balance)}
