"""What this machine allows one call at a time, next to aqnode, in the same run:
``scripts/floor-bench [--rounds 5] [--seconds 2]``.

A **relay** is the least a design with aqnode's shape can do per call: a client, one
process in the middle (uvloop, a Unix socket, like the supervisor) and Redis with AOF
on. It has no logic at all: per call it writes one ``HSET`` of 100 bytes to Redis and
answers when Redis has answered (``ack``). ``run`` answers at the same point and then
does what aqnode does after an acknowledgement: it hands the call to a second process
(a handler stand-in that answers at once, like a shard) and writes a second ``HSET``
(the outcome), unawaited. ``wait`` does the same before it answers:
``enqueue_and_wait``'s two durable transitions and its hop to a shard. ``direct`` is no
middle process at all: the client's own ``HSET``.

Each round measures, back to back, on one ``redis-server`` (AOF on, ``everysec``) and
one ``aqnode serve`` (``bench.handlers``, 2 shards, from ``bench/procs.py``):

- one awaited call at a time for ``--seconds``, from a plain asyncio client (the
  default loop of ``scripts/bench``) and from a blocking socket, to the relay
  (``ack``, ``run``) and to aqnode (``await Client.enqueue``, ``SyncClient.enqueue``);
- 1,000 calls of ``wait`` / ``enqueue_and_wait`` (p50, p99);
- ``direct``: the same ``HSET``s straight to Redis.

For the ``run`` measurements and aqnode's, it also takes the CPU per call of the
processes in the middle (the relay and its worker; the supervisor and its shards) and
of Redis. It prints each round and then the medians, and **aqnode / relay per round**: the share
of what the machine allows that aqnode reaches, a figure that compares across machines
better than an absolute rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import uvloop

from aqnode.client import Client, SyncClient
from bench.handlers import Echo
from bench.procs import NodeSpec, aqnode_serve, die_with_us, redis_server, wait_ready

VALUE = b"x" * 100
WAIT_CALLS = 1000


def hset(key: bytes) -> bytes:
    return b"*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$1\r\nf\r\n$100\r\n%s\r\n" % (len(key), key, VALUE)


# ---- the relay process ---------------------------------------------------------------


async def relay(sock_path: str, redis_port: int) -> None:
    """Serve ``a`` (ack: one HSET), ``r`` (run: answered after one HSET, then the worker
    and a second HSET, unawaited) and ``w`` (wait: HSET, the worker, HSET) lines."""
    loop = asyncio.get_running_loop()
    # Redis answers in order: each reply goes to the oldest callback. Every reply to an
    # HSET is one short line (":0\r\n" or ":1\r\n").
    after_redis: deque[Callable[[], None]] = deque()
    after_worker: deque[Callable[[], None]] = deque()

    class RedisSide(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            for _ in range(data.count(b"\r\n")):
                after_redis.popleft()()

    class WorkerSide(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            for _ in range(len(data)):
                after_worker.popleft()()

    redis_t, _ = await loop.create_connection(RedisSide, "127.0.0.1", redis_port)
    worker_sock = sock_path + ".worker"
    worker_t, _ = await loop.create_unix_connection(WorkerSide, worker_sock)
    counter = [0]

    class ClientSide(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            for kind in data.splitlines():
                counter[0] += 1
                key = b"floor:%d" % (counter[0] % 100)
                t = self.t
                if kind == b"a":
                    after_redis.append(lambda t=t: t.write(b"k\n"))
                elif kind == b"r":  # answered at the first write; the rest runs after

                    def done(key: bytes = key) -> None:
                        after_redis.append(lambda: None)
                        redis_t.write(hset(key))

                    def acked(t: asyncio.Transport = t, done: Callable[[], None] = done) -> None:
                        t.write(b"k\n")
                        after_worker.append(done)
                        worker_t.write(b"d")

                    after_redis.append(acked)
                else:

                    def finish(t: asyncio.Transport = t, key: bytes = key) -> None:
                        after_redis.append(lambda: t.write(b"k\n"))
                        redis_t.write(hset(key))

                    def handed(key: bytes = key) -> None:
                        after_worker.append(finish)
                        worker_t.write(b"d")

                    after_redis.append(handed)
                redis_t.write(hset(key))

    await loop.create_unix_server(ClientSide, sock_path)
    await asyncio.Event().wait()


async def worker(sock_path: str) -> None:
    """The handler stand-in: answers each byte with one byte, at once."""

    class Side(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.t.write(b"o" * len(data))

    await asyncio.get_running_loop().create_unix_server(Side, sock_path)
    await asyncio.Event().wait()


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    launch = die_with_us()
    return subprocess.Popen(
        [*launch.prefix, sys.executable, "-m", "bench.floor", *args],
        preexec_fn=launch.preexec_fn,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _wait_for(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"floor-bench: {path} did not appear")
        time.sleep(0.02)


# ---- the client side -----------------------------------------------------------------


async def _timed_async(
    seconds: float, call: Callable[[int], Awaitable[object]]
) -> tuple[int, float]:
    """(calls made, calls/s) of ``call`` awaited one at a time for ``seconds``."""
    n, began = 0, time.perf_counter()
    end = began + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            await call(n)
            n += 1
    return n, n / (time.perf_counter() - began)


def _timed_sync(seconds: float, call: Callable[[int], object]) -> tuple[int, float]:
    n, began = 0, time.perf_counter()
    end = began + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            call(n)
            n += 1
    return n, n / (time.perf_counter() - began)


async def _latencies(call: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    took = []
    for i in range(WAIT_CALLS):
        began = time.perf_counter()
        await call(i)
        took.append(time.perf_counter() - began)
    took.sort()
    return took[len(took) // 2] * 1000, took[int(len(took) * 0.99)] * 1000


class _Line:
    """A line-per-call client of the relay (asyncio)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def call(self, kind: bytes) -> None:
        self.writer.write(kind)
        await self.reader.readline()


async def _direct_async(port: int, seconds: float) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def call(n: int) -> None:
        writer.write(hset(b"floor:%d" % (n % 100)))
        await reader.readline()

    try:
        return await _timed_async(seconds, call)
    finally:
        writer.close()


def _direct_sync(port: int, seconds: float) -> tuple[int, float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _timed_sync(
            seconds, lambda n: (sock.sendall(hset(b"floor:%d" % (n % 100))), sock.recv(64))
        )


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


class CpuPerCall:
    """CPU per call (us) of the middle processes (the relay and its worker, or the node's
    supervisor and shards) and of Redis, over one rate measurement."""

    def __init__(self, out: dict[str, float], redis_pid: int) -> None:
        self.out, self.redis_pid = out, redis_pid

    async def rate_async(
        self,
        label: str,
        middle: list[int],
        seconds: float,
        call: Callable[[int], Awaitable[object]],
    ) -> None:
        before = _cpu_s(middle), _cpu_s([self.redis_pid])
        calls, rate = await _timed_async(seconds, call)
        self._record(label, middle, before, calls, rate)

    def rate_sync(
        self, label: str, middle: list[int], seconds: float, call: Callable[[int], object]
    ) -> None:
        before = _cpu_s(middle), _cpu_s([self.redis_pid])
        calls, rate = _timed_sync(seconds, call)
        self._record(label, middle, before, calls, rate)

    def _record(
        self, label: str, middle: list[int], before: tuple[float, float], calls: int, rate: float
    ) -> None:
        self.out[label] = rate
        self.out[f"{label}: middle CPU"] = (_cpu_s(middle) - before[0]) / calls * 1e6
        self.out[f"{label}: Redis CPU"] = (_cpu_s([self.redis_pid]) - before[1]) / calls * 1e6


async def one_round(
    sock_path: str, address: str, redis_port: int, seconds: float, pids: dict[str, list[int]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    cpu = CpuPerCall(out, pids["redis"][0])
    reader, writer = await asyncio.open_unix_connection(sock_path)
    line = _Line(reader, writer)
    async with Client(address) as client:
        for i in range(300):  # warm: the workers, the move to the native socket
            await client.enqueue_and_wait(Echo(id=f"e{i % 100}", seq=i))
        _, out["relay ack, asyncio"] = await _timed_async(seconds, lambda n: line.call(b"a\n"))
        await cpu.rate_async(
            "relay run, asyncio", pids["relay"], seconds, lambda n: line.call(b"r\n")
        )
        await cpu.rate_async(
            "aqnode await enqueue",
            pids["node"],
            seconds,
            lambda n: client.enqueue(Echo(id=f"e{n % 100}", seq=n)),
        )
        out["relay wait p50"], out["relay wait p99"] = await _latencies(lambda n: line.call(b"w\n"))
        out["aqnode enqueue_and_wait p50"], out["aqnode enqueue_and_wait p99"] = await _latencies(
            lambda n: client.enqueue_and_wait(Echo(id=f"e{n % 20}", seq=n))
        )
    writer.close()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(sock_path)
        _, out["relay ack, blocking"] = _timed_sync(
            seconds, lambda n: (sock.sendall(b"a\n"), sock.recv(64))
        )
        cpu.rate_sync(
            "relay run, blocking",
            pids["relay"],
            seconds,
            lambda n: (sock.sendall(b"r\n"), sock.recv(64)),
        )
    sync = SyncClient(address)
    try:
        for i in range(300):
            sync.enqueue_and_wait(Echo(id=f"e{i % 100}", seq=i), timeout=30)
        cpu.rate_sync(
            "aqnode SyncClient.enqueue",
            pids["node"],
            seconds,
            lambda n: sync.enqueue(Echo(id=f"e{n % 100}", seq=n)),
        )
    finally:
        sync.close()
    _, out["direct HSET, asyncio"] = await _direct_async(redis_port, seconds)
    _, out["direct HSET, blocking"] = _direct_sync(redis_port, seconds)
    return out


RATIOS = (
    ("aqnode await enqueue", "relay ack, asyncio"),
    ("aqnode await enqueue", "relay run, asyncio"),
    ("aqnode SyncClient.enqueue", "relay ack, blocking"),
    ("aqnode SyncClient.enqueue", "relay run, blocking"),
    ("aqnode enqueue_and_wait p50", "relay wait p50"),
)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--relay", "--worker"):
        if sys.argv[1] == "--relay":
            uvloop.run(relay(sys.argv[2], int(sys.argv[3])))
        else:
            uvloop.run(worker(sys.argv[2]))
        return
    p = argparse.ArgumentParser(
        prog="scripts/floor-bench",
        description="What this machine allows one call at a time: a relay with no logic "
        "next to aqnode, in the same run (see BENCHMARKS.md).",
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="relay and aqnode measured in turn (default 5)"
    )
    p.add_argument("--seconds", type=float, default=2.0, help="per rate measurement (default 2)")
    args = p.parse_args()
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with redis_server(work, aof=True) as server:
            spec = NodeSpec(
                name="floor", shards=2, idle_timeout_ms=600_000, heartbeat_ms=200, key_prefix="fl"
            )
            with aqnode_serve(work, server.url, spec) as node:
                asyncio.run(wait_ready(node))
                sock_path = str(work / "relay.sock")
                procs = [_spawn("--worker", sock_path + ".worker")]
                try:
                    _wait_for(sock_path + ".worker", procs[0])
                    procs.append(_spawn("--relay", sock_path, str(server.port)))
                    _wait_for(sock_path, procs[1])
                    pids = {
                        "redis": [server.proc.pid],
                        "relay": [proc.pid for proc in procs],
                        "node": node.pids(),
                    }
                    for r in range(args.rounds):
                        out = asyncio.run(
                            one_round(sock_path, node.address, server.port, args.seconds, pids)
                        )
                        rounds.append(out)
                        print(
                            f"round {r}: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()),
                            flush=True,
                        )
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
    print("\n| measurement | median (min-max) |\n|---|---|")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        unit = " ms" if key.endswith(("p50", "p99")) else " us" if key.endswith("CPU") else "/s"
        spread = f"{min(values):,.4g}-{max(values):,.4g}"
        print(f"| {key} | {statistics.median(values):,.4g}{unit} ({spread}) |")
    print("\n| aqnode / relay, per round | median (min-max) |\n|---|---|")
    for mine, floor in RATIOS:
        ratios = [r[mine] / r[floor] for r in rounds]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"| {mine} / {floor} | {statistics.median(ratios):.2f}x ({spread}) |")


if __name__ == "__main__":
    main()
