"""The ``realio`` baseline: hash-partitioned Redis lists, one sequential consumer per list.

What a careful user builds by hand to keep per-entity FIFO without locks:

- ``lists`` Redis lists (16 by default); an entity's messages all go to list
  ``crc32(entity) % lists``.
- **producer** (in the benchmark process): ``LPUSH`` each message (``Deposit``, msgpack)
  to its entity's list, through a redis-py pipeline, ``chunk`` (1,000) per round trip.
- **workers**: ``processes`` worker processes (spawned fresh interpreters, as many as the
  node has shards), each one uvloop event loop. Worker ``i`` owns the lists ``j`` with
  ``j % processes == i`` and runs one consumer coroutine per list: ``BRPOP`` the list
  (its own connection: a blocked ``BRPOP`` holds one), run the handler body
  (``bench.io_handlers.work``, over the process' pooled client, as in the node), next.

One consumer per list and LPUSH/BRPOP at opposite ends keep each entity's messages in
enqueue order with no lock, but there is no log and no ack (a popped message whose worker
dies is lost), and a slow message holds up every entity that hashes to its list
(head-of-line blocking).

As in ``bench/baseline.py``, every worker records each job it runs (entity, seq, start and
end on CLOCK_MONOTONIC) in memory for ``baseline.order_report``, and bumps a shared-memory
counter, so that neither costs a Redis round trip.
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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import uvloop

from bench import io_handlers
from bench.baseline import Record
from bench.io_handlers import Deposit
from bench.procs import set_pdeathsig

BRPOP_TIMEOUT_S = 5  #: seconds; an idle consumer's BRPOP returns empty this often


@dataclass(frozen=True)
class ListsConfig:
    redis_url: str
    processes: int = 2
    lists: int = 16
    pool_size: int = io_handlers.DEFAULT_POOL  #: the handler client's pool, per process
    prefix: str = "bll:"  #: the queues' key prefix
    io_prefix: str = "blio:"  #: the handler's keys' prefix

    def queue(self, index: int) -> str:
        return f"{self.prefix}q{index}"

    def queue_of(self, entity: str) -> str:
        return self.queue(zlib.crc32(entity.encode()) % self.lists)


# ---- the worker process --------------------------------------------------------------------


def worker_main(
    index: int, config: ListsConfig, done: Any, conn: multiprocessing.connection.Connection
) -> None:
    set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops us
    io_handlers.configure(config.redis_url, config.pool_size, config.io_prefix)
    uvloop.run(_worker(index, config, done, conn))


async def _worker(
    index: int, config: ListsConfig, done: Any, conn: multiprocessing.connection.Connection
) -> None:
    mine = [q for q in range(config.lists) if q % config.processes == index]
    # one connection per blocked BRPOP; redis-py 8's default socket timeout (5 s) must
    # outlast the BRPOP's own
    popper = aioredis.Redis.from_url(
        config.redis_url, socket_timeout=BRPOP_TIMEOUT_S + 10, max_connections=len(mine) + 1
    )
    await popper.ping()
    await io_handlers.client().ping()  # connect the handler's pool before the clock runs
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
    consumers = [
        loop.create_task(_consume(popper, config.queue(q), done, index, records)) for q in mine
    ]
    for task in consumers:
        task.add_done_callback(_report_crash)
    conn.send("ready")
    await stop.wait()
    loop.remove_reader(conn.fileno())
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    await popper.aclose()
    await io_handlers.close()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A consumer that dies says so (the benchmark then stalls and gives up)."""
    if not task.cancelled() and task.exception() is not None:
        traceback.print_exception(task.exception())


async def _consume(
    popper: aioredis.Redis, queue: str, done: Any, index: int, records: list[Record]
) -> None:
    decode = msgspec.msgpack.Decoder(Deposit).decode
    work = io_handlers.work
    while True:
        popped = await popper.brpop([queue], timeout=BRPOP_TIMEOUT_S)
        if popped is None:
            continue
        msg = decode(cast(bytes, popped[1]))
        start = time.monotonic_ns()
        await work(msg)
        records.append((msg.id, msg.seq, start, time.monotonic_ns()))
        done[index] += 1


# ---- the pool, seen from the benchmark -----------------------------------------------------


class ListsPool:
    def __init__(self, config: ListsConfig) -> None:
        self.config = config
        ctx = multiprocessing.get_context("spawn")
        self._done: Any = ctx.RawArray("q", config.processes)  #: jobs run, per worker
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        self._theirs: list[multiprocessing.connection.Connection] = []
        for i in range(config.processes):
            ours, theirs = ctx.Pipe()
            self._procs.append(
                ctx.Process(
                    target=worker_main,
                    args=(i, config, self._done, theirs),
                    name=f"bench-lists-{i}",
                    daemon=True,
                )
            )
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
                raise SystemExit(f"bench: lists baseline worker {proc.name} did not start")

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def done(self) -> int:
        return sum(self._done[i] for i in range(self.config.processes))

    def reset(self) -> None:
        """Zero the counters (call only while the workers are idle)."""
        for i in range(self.config.processes):
            self._done[i] = 0

    def check_alive(self) -> None:
        for proc in self._procs:
            if not proc.is_alive():
                raise SystemExit(f"bench: lists baseline worker {proc.name} died ({proc.exitcode})")

    def collect(self, timeout: float = 30.0) -> list[Record]:
        """Every worker's records since the last collect."""
        out: list[Record] = []
        for conn in self._conns:
            conn.send("collect")
        for proc, conn in zip(self._procs, self._conns, strict=True):
            if not conn.poll(timeout):
                raise SystemExit(f"bench: lists baseline worker {proc.name} did not answer")
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


async def produce(
    client: aioredis.Redis, config: ListsConfig, deposits: Sequence[Deposit], chunk: int
) -> None:
    """LPUSH every Deposit to its entity's list, pipelined, ``chunk`` per round trip."""
    encode = msgspec.msgpack.Encoder().encode
    queue_of: dict[str, str] = {}
    for start in range(0, len(deposits), chunk):
        pipe = client.pipeline(transaction=False)
        for d in deposits[start : start + chunk]:
            queue = queue_of.get(d.id)
            if queue is None:
                queue = queue_of[d.id] = config.queue_of(d.id)
            pipe.lpush(queue, encode(d))
        await pipe.execute()
