"""The baseline: per-entity processing the way users build it today, with redis-py only.

A job queue in a Redis list plus a lock per entity, as with arq or dramatiq and redis-py's
``Lock`` (neither is installed here, so this is the same pattern written out by hand):

- **producer** (in the benchmark process, on the same asyncio loop the node's client
  uses): one ``LPUSH`` per message, awaited one at a time (``lpush``), or the same
  ``LPUSH``es sent through a redis-py pipeline in chunks (``lpush_pipelined``). The job
  is the ``Ping`` message, msgpack-encoded with msgspec.
- **workers**: ``processes`` worker processes (spawned fresh interpreters, as many as
  the node has shards), each one asyncio event loop (uvloop, as in the node's shards)
  running ``concurrency`` consumers (arq's default ``max_jobs`` is 10). A consumer does
  ``BRPOP`` on the queue, takes ``redis.lock(f"lock:{entity}", timeout=...,
  blocking_timeout=..., sleep=...)``, runs the very same handler body as the node
  (``bench.handlers.work``), releases the lock, and takes the next job. A job whose lock
  does not come within ``blocking_timeout`` goes back on the queue (``LPUSH``; what a
  retry does) and counts as requeued.

There is no acknowledgement: a job popped by a worker that then dies is lost (arq and
dramatiq add ack/retry machinery, and with it more round trips). The lock keeps two
jobs of one entity from running at once, but nothing keeps them in enqueue order: two
consumers pop an entity's jobs k and k+1 and whichever takes the lock first runs first,
and a lock waiter polls every ``sleep`` seconds, so a later job can get in first.

To see that, every worker records each job it runs (entity, seq, start and end on
CLOCK_MONOTONIC, which all processes share) in memory; ``order_report`` merges the
records of all workers and counts, per entity, the jobs that ran after a job with a
higher ``seq`` (out of enqueue order) and any that overlapped another one. The records
cost no Redis round trip, so they do not slow the baseline down. A shared-memory
counter per worker tells the benchmark how many jobs are done without asking Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import uvloop

from bench.handlers import Ping, work
from bench.procs import set_pdeathsig

BRPOP_TIMEOUT_S = 5  #: seconds; an idle consumer's BRPOP returns empty this often
#: shared counters per worker process: jobs done, jobs requeued, microseconds in lock.acquire
DONE, REQUEUED, LOCK_WAIT_US, SLOTS = 0, 1, 2, 3

Record = tuple[str, int, int, int]  # entity id, seq, start ns, end ns


@dataclass(frozen=True)
class BaselineConfig:
    redis_url: str
    processes: int = 2
    concurrency: int = 10  #: consumers per process (arq's max_jobs default)
    lock_timeout_s: float = 30.0  #: the lock's TTL (a crashed holder's lock expires)
    blocking_timeout_s: float = 10.0  #: give up on the lock after this, requeue the job
    lock_sleep_s: float = 0.1  #: a waiter polls the lock this often (redis-py's default)
    prefix: str = "bl:"

    @property
    def queue(self) -> str:
        return f"{self.prefix}queue"


# ---- the worker process --------------------------------------------------------------------


def worker_main(
    index: int,
    config: BaselineConfig,
    counters: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops us
    uvloop.run(_worker(index, config, counters, conn))


async def _worker(
    index: int,
    config: BaselineConfig,
    counters: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    # redis-py 8 reads with a default socket timeout of its own: longer than a BRPOP
    client = aioredis.Redis.from_url(config.redis_url, socket_timeout=BRPOP_TIMEOUT_S + 10)
    await client.ping()
    records: list[Record] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_control() -> None:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            stop.set()
            return
        if command == "collect":
            # the loop made the socket non-blocking; a big reply must go out whole
            os.set_blocking(conn.fileno(), True)
            conn.send(records.copy())
            records.clear()
        elif command == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_control)
    base = index * SLOTS
    consumers = [
        loop.create_task(_consume(client, config, counters, base, records))
        for _ in range(config.concurrency)
    ]
    for task in consumers:
        task.add_done_callback(_report_crash)
    conn.send("ready")
    await stop.wait()
    loop.remove_reader(conn.fileno())
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    await client.aclose()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A consumer that dies says so (the benchmark then times out waiting for its jobs)."""
    if not task.cancelled() and task.exception() is not None:
        traceback.print_exception(task.exception())


async def _consume(
    client: aioredis.Redis,
    config: BaselineConfig,
    counters: Any,
    base: int,
    records: list[Record],
) -> None:
    decode = msgspec.msgpack.Decoder(Ping).decode
    queue = config.queue
    while True:
        popped = await client.brpop([queue], timeout=BRPOP_TIMEOUT_S)
        if popped is None:
            continue
        raw = cast(bytes, popped[1])
        msg = decode(raw)
        lock = client.lock(
            f"{config.prefix}lock:{msg.id}",
            timeout=config.lock_timeout_s,
            sleep=config.lock_sleep_s,
            blocking_timeout=config.blocking_timeout_s,
        )
        asked = time.monotonic_ns()
        if not await lock.acquire():
            await client.lpush(queue, raw)  # back of the line, as a retry would
            counters[base + REQUEUED] += 1
            continue
        start = time.monotonic_ns()
        counters[base + LOCK_WAIT_US] += (start - asked) // 1000
        try:
            await work(msg)
        finally:
            end = time.monotonic_ns()
            await lock.release()
        records.append((msg.id, msg.seq, start, end))
        counters[base + DONE] += 1


# ---- the pool, seen from the benchmark -----------------------------------------------------


class BaselinePool:
    def __init__(self, config: BaselineConfig) -> None:
        self.config = config
        ctx = multiprocessing.get_context("spawn")
        self._counters: Any = ctx.RawArray("q", config.processes * SLOTS)
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        self._theirs: list[multiprocessing.connection.Connection] = []
        for i in range(config.processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(i, config, self._counters, theirs),
                name=f"bench-baseline-{i}",
                daemon=True,
            )
            self._procs.append(proc)
            self._conns.append(ours)
            self._theirs.append(theirs)

    def start(self, timeout: float = 60.0) -> None:
        for proc in self._procs:
            proc.start()
        for theirs in self._theirs:
            theirs.close()  # the worker holds its end; ours sees EOF if it dies
        deadline = time.monotonic() + timeout
        for proc, conn in zip(self._procs, self._conns, strict=True):
            if not conn.poll(max(0.0, deadline - time.monotonic())) or conn.recv() != "ready":
                raise SystemExit(f"bench: baseline worker {proc.name} did not start")

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _sum(self, slot: int) -> int:
        return sum(self._counters[i * SLOTS + slot] for i in range(self.config.processes))

    def done(self) -> int:
        return self._sum(DONE)

    def stats(self) -> dict[str, int]:
        return {"requeued": self._sum(REQUEUED), "lock_wait_us": self._sum(LOCK_WAIT_US)}

    def reset(self) -> None:
        """Zero the counters (call only while the workers are idle)."""
        for i in range(len(self._counters)):
            self._counters[i] = 0

    def check_alive(self) -> None:
        for proc in self._procs:
            if not proc.is_alive():
                raise SystemExit(f"bench: baseline worker {proc.name} died ({proc.exitcode})")

    def collect(self, timeout: float = 30.0) -> list[Record]:
        """Every worker's records since the last collect."""
        out: list[Record] = []
        for conn in self._conns:
            conn.send("collect")
        for proc, conn in zip(self._procs, self._conns, strict=True):
            if not conn.poll(timeout):
                raise SystemExit(f"bench: baseline worker {proc.name} did not answer")
            out.extend(conn.recv())
        return out

    def stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> BaselinePool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- producers -----------------------------------------------------------------------------


async def produce(
    client: aioredis.Redis, queue: str, pings: Sequence[Ping], *, pipelined: bool, chunk: int
) -> None:
    """Push every Ping as one job: one awaited LPUSH each, or pipelined in chunks."""
    encode = msgspec.msgpack.Encoder().encode
    if not pipelined:
        for ping in pings:
            await client.lpush(queue, encode(ping))
        return
    for start in range(0, len(pings), chunk):
        pipe = client.pipeline(transaction=False)
        for ping in pings[start : start + chunk]:
            pipe.lpush(queue, encode(ping))
        await pipe.execute()


def order_report(records: list[Record], counts: dict[str, int]) -> dict[str, float]:
    """Per entity, in the order the jobs started: how many ran out of enqueue order (a
    ``seq`` not above one already run), how many overlapped a job of the same entity
    still running, and how many are missing or ran twice."""
    by_entity: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for entity, seq, start, end in records:
        by_entity[entity].append((start, end, seq))
    out_of_order = overlaps = extra = 0
    entities_out_of_order = 0
    for runs in by_entity.values():
        runs.sort()
        top_seq, last_end, bad = -1, 0, 0
        for start, end, seq in runs:
            if seq <= top_seq:
                bad += 1
            if start < last_end:
                overlaps += 1
            top_seq = max(top_seq, seq)
            last_end = max(last_end, end)
        out_of_order += bad
        entities_out_of_order += 1 if bad else 0
    missing = 0
    for entity, expected in counts.items():
        got = len(by_entity.get(entity, ()))
        missing += max(0, expected - got)
        extra += max(0, got - expected)
    return {
        "out_of_order": float(out_of_order),
        "entities_out_of_order": float(entities_out_of_order),
        "overlaps": float(overlaps),
        "missing": float(missing),
        "duplicates": float(extra),
    }
