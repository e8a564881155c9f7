"""Handlers for the integration tests. Each execution is recorded in Redis.

The shard reads ``AQ_TEST_REDIS_URL`` (set by tests/node_fixture.py) so that tests can
see, from outside the node, what ran, where and in which order.
"""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import redis
import redis.asyncio as aioredis

from aqnode import Command, Context, Query, entity_type, handles

NODE_ID = "test-node"  # tests/node_fixture.py sets server_id to this
_client: aioredis.Redis | None = None
_sync_client: redis.Redis | None = None


def store() -> aioredis.Redis:
    global _client
    if _client is None:
        # Blocking pool: many entities at once wait for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            os.environ["AQ_TEST_REDIS_URL"], max_connections=64, timeout=30
        )
        _client = aioredis.Redis(connection_pool=pool)
    return _client


def sync_store() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(os.environ["AQ_TEST_REDIS_URL"])
    return _sync_client


class Counted(msgspec.Struct):
    name: str
    value: int


@entity_type("counter", id_field="name")
class Incr(Command[Counted]):
    """Read-modify-write with an await between the read and the write."""

    name: str
    by: int = 1
    sender: str = ""
    seq: int = 0


@entity_type("counter", id_field="name")
class Get(Query[int]):
    name: str


@entity_type("counter", id_field="name")
class Sleep(Command[None]):
    name: str
    ms: int


@entity_type("counter", id_field="name")
class Fail(Command[None]):
    name: str
    text: str


@entity_type("counter", id_field="name")
class WhoRuns(Command[int]):
    """Returns the shard's pid and records it."""

    name: str


@entity_type("counter", id_field="name")
class OwnState(Command[str]):
    """Returns this message's own state in the write-ahead log, read while it runs."""

    name: str


@entity_type("counter", id_field="name")
class WaitOnSelf(Command[str]):
    name: str


@entity_type("counter", id_field="name")
class Forward(Command[int]):
    """Sends Incr to another counter through ctx.bus and waits for it."""

    name: str
    to: str


@entity_type("counter", id_field="name")
class BlockingWork(Command[float]):
    """A plain def: runs in a thread; returns when it started."""

    name: str
    ms: int


@handles(Incr)
async def incr(msg: Incr, ctx: Context) -> Counted:
    r = store()
    value = int(await r.get(f"t:counter:{msg.name}") or 0)
    await asyncio.sleep(0.001)  # a lost update would show here
    value += msg.by
    await r.set(f"t:counter:{msg.name}", value)
    if msg.sender:
        await r.rpush(f"t:order:{msg.name}:{msg.sender}", msg.seq)
    await r.rpush("t:ran", ctx.message_id)
    return Counted(msg.name, value)


@handles(Get)
async def get(msg: Get, ctx: Context) -> int:
    return int(await store().get(f"t:counter:{msg.name}") or 0)


@handles(Sleep)
async def sleep(msg: Sleep, ctx: Context) -> None:
    await store().sadd("t:pids", os.getpid())
    await asyncio.sleep(msg.ms / 1000)
    await store().rpush("t:slept", f"{msg.name}:{ctx.message_id}")


@handles(Fail)
async def fail(msg: Fail, ctx: Context) -> None:
    raise ValueError(msg.text)


@handles(WhoRuns)
async def who_runs(msg: WhoRuns, ctx: Context) -> int:
    await store().sadd("t:pids", os.getpid())
    await store().rpush(f"t:pid:{msg.name}", os.getpid())
    return os.getpid()


@handles(OwnState)
async def own_state(msg: OwnState, ctx: Context) -> str:
    prefix = os.environ.get("AQ_TEST_KEY_PREFIX", "aq")
    state = await store().hget(f"{prefix}:{{{NODE_ID}}}:m:{ctx.message_id}", "state")
    return (state or b"missing").decode()


@handles(WaitOnSelf)
async def wait_on_self(msg: WaitOnSelf, ctx: Context) -> str:
    from aqnode.errors import AqError

    try:
        await ctx.bus.enqueue_and_wait(Get(name=msg.name))
    except AqError as exc:
        return exc.code
    return "no error"


@handles(Forward)
async def forward(msg: Forward, ctx: Context) -> int:
    result = await ctx.bus.enqueue_and_wait(Incr(name=msg.to))
    return result.value


@handles(BlockingWork)
def blocking_work(msg: BlockingWork, ctx: Context) -> float:
    started = time.time()
    time.sleep(msg.ms / 1000)  # blocks its thread only
    sync_store().rpush("t:blocking", msg.name)
    return started


# ---- failure semantics ---------------------------------------------------------------


@entity_type("counter", id_field="name")
class Flaky(Command[int]):
    """Fails until its attempt number exceeds ``fail_times``; returns the attempt."""

    name: str
    fail_times: int
    seq: int = 0


@entity_type("counter", id_field="name")
class Crash(Command[None]):
    """Kills its own shard process mid-handler (only on the first attempt if ``once``)."""

    name: str
    once: bool = False


@handles(Flaky)
async def flaky(msg: Flaky, ctx: Context) -> int:
    await store().rpush(f"t:attempts:{msg.name}", f"{msg.seq}:{ctx.attempt}")
    if ctx.attempt <= msg.fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


@handles(Crash)
async def crash(msg: Crash, ctx: Context) -> None:
    await store().rpush(f"t:crash:{msg.name}", ctx.attempt)
    if not msg.once or ctx.attempt == 1:
        os.kill(os.getpid(), 9)


@entity_type("ledger", id_field="name")
class Record(Command[None]):
    """Appends one line per execution to a file (survives Redis outages and kill -9)."""

    name: str
    sender: str
    seq: int


_record_fd: int | None = None


@handles(Record)
async def record(msg: Record, ctx: Context) -> None:
    global _record_fd
    if _record_fd is None:
        path = os.path.join(os.environ["AQ_TEST_RECORD_DIR"], f"exec-{os.getpid()}.log")
        _record_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = f"{time.time():.6f} {os.getpid()} {msg.name} {msg.sender} {msg.seq} {ctx.message_id}\n"
    os.write(_record_fd, line.encode())  # one write(2) per line: atomic with O_APPEND
    await asyncio.sleep(0.002)


@entity_type("counter", id_field="name")
class FailWhileBroken(Command[int]):
    """Fails while the Redis key ``t:broken`` exists; else counts its runs."""

    name: str


@handles(FailWhileBroken)
async def fail_while_broken(msg: FailWhileBroken, ctx: Context) -> int:
    if await store().exists("t:broken"):
        raise RuntimeError("the downstream service is broken")
    return int(await store().incr(f"t:fixed:{msg.name}"))


@entity_type("counter", id_field="name")
class BlockLoop(Command[None]):
    """An async handler that blocks its shard's event loop (a bug the node must survive)."""

    name: str
    seconds: float


@handles(BlockLoop)
async def block_loop(msg: BlockLoop, ctx: Context) -> None:
    await store().set(f"t:blocking:{msg.name}", ctx.message_id)  # tests wait for this
    time.sleep(msg.seconds)


# ---- cluster mode ----------------------------------------------------------------------


@entity_type("counter", id_field="name")
class Span(Command[int]):
    """Sleeps ``ms``, records ``start:end:pid:message_id:seq:sender``; returns the pid."""

    name: str
    ms: int = 0
    seq: int = 0
    sender: str = ""


@handles(Span)
async def span(msg: Span, ctx: Context) -> int:
    started = time.time()
    await store().rpush(f"t:span-start:{msg.name}", ctx.message_id)
    await asyncio.sleep(msg.ms / 1000)
    ended = time.time()
    record = f"{started}:{ended}:{os.getpid()}:{ctx.message_id}:{msg.seq}:{msg.sender}"
    await store().rpush(f"t:span:{msg.name}", record)
    return os.getpid()


@entity_type("counter", id_field="name")
class Token(Query[int]):
    """Returns ctx.fencing_token."""

    name: str


@handles(Token)
async def token(msg: Token, ctx: Context) -> int:
    return ctx.fencing_token
