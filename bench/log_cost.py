"""What the log costs Redis, in instructions: ``scripts/log-cost [--messages 1000]``.

Starts ``redis-server`` (AOF on, as the benchmarks run it) under valgrind's callgrind
and drives this tree's real :class:`aqnode.wal.WriteAheadLog` against it, each commit
awaited before the next: ``--messages`` messages enqueued in commits of 100 (written
`dispatched`, as for an idle entity), then finished in commits of 100, then a quarter as
many one message per commit, then cleanup of them all, 100 per call. Prints Redis's
instructions per message for each phase: a count that repeats within 1 % from run to
run (Redis's timers add a little) and does not depend on what else the machine is
doing, unlike its CPU time. It counts Redis's own code only, not the kernel's work for
its sockets and its AOF.

Needs ``valgrind`` (Debian's package). Slow: about a minute for 1,000 messages.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from aqnode.wal import EnqueueEntry, FinishEntry, LogKeys, LogState, WriteAheadLog
from bench.procs import free_port

PAYLOAD = b"\x82\xa2id\xa5e-123\xa3seq\x05"  #: a small msgpack payload, like bench.handlers'
START_TIMEOUT_S = 120.0  #: redis-server under callgrind starts slowly


class Callgrind:
    """redis-server under callgrind, with its counters zeroed and read on demand."""

    def __init__(self, directory: Path) -> None:
        self.out = directory / "callgrind.out"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self.out}",
                "redis-server",
                "--port",
                str(self.port),
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def zero(self) -> None:
        subprocess.run(
            ["callgrind_control", "-z", str(self.proc.pid)], check=True, capture_output=True
        )

    def instructions(self) -> int:
        """Instructions since the last zero (a dump, read back)."""
        before = set(self.out.parent.glob(self.out.name + ".*"))
        subprocess.run(
            ["callgrind_control", "-d", str(self.proc.pid)], check=True, capture_output=True
        )
        deadline = time.monotonic() + 30
        while not (new := set(self.out.parent.glob(self.out.name + ".*")) - before):
            if time.monotonic() > deadline:
                raise SystemExit("log-cost: callgrind wrote no dump")
            time.sleep(0.05)
        total = 0
        for dump in new:
            for line in dump.read_text().splitlines():
                if line.startswith(("totals:", "summary:")):
                    total = max(total, int(line.split()[1]))
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _connect(port: int) -> aioredis.Redis:
    client = aioredis.Redis(port=port, socket_timeout=600)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            await client.ping()
            return client
        except (OSError, aioredis.ConnectionError):
            if time.monotonic() > deadline:
                raise SystemExit("log-cost: redis-server did not start under callgrind") from None
            await asyncio.sleep(0.2)


async def measure(redis: Callgrind, messages: int) -> dict[str, float]:
    client = await _connect(redis.port)
    wal = WriteAheadLog(client, LogKeys("aq", "cost"), entry_ttl_s=600, clock=time.time)
    await wal.start()
    loop = asyncio.get_running_loop()

    async def commit(send: Callable[[Any, Any], None], items: Sequence[Any]) -> None:
        future: asyncio.Future[Any] = loop.create_future()
        send(items, future.set_result)
        await future

    def ids(tag: str, n: int) -> list[str]:
        return [f"01JABCDEFGHJKMNPQ{tag}{i:06d}" for i in range(n)]

    def entries(part: list[str]) -> list[EnqueueEntry]:
        now = time.time()
        return [
            EnqueueEntry(m, "bench", "Ping", "e-123", PAYLOAD, now, dispatch=True) for m in part
        ]

    def outcomes(part: list[str]) -> list[FinishEntry]:
        return [FinishEntry(m, LogState.COMPLETED, b"\xc0", b"") for m in part]

    warm = ids("W", 200)  # connection, scripts and indexes in place before counting
    await commit(wal.enqueue, entries(warm))
    await commit(wal.finish, outcomes(warm))
    result: dict[str, float] = {}
    total = len(warm)
    for label, size, count in (
        ("batches of 100", 100, messages),
        ("one per commit", 1, messages // 4),
    ):
        mids = ids("B" if size > 1 else "S", count)
        total += count
        for phase, send, make in (
            ("enqueue", wal.enqueue, entries),
            ("finish", wal.finish, outcomes),
        ):
            redis.zero()
            for start in range(0, count, size):
                await commit(send, make(mids[start : start + size]))
            result[f"{phase}, {label}"] = redis.instructions() / count
    redis.zero()
    while await wal.cleanup(time.time() + 10, limit=100) > 0:
        pass
    result["cleanup, 100 per call"] = redis.instructions() / total
    await wal.close()
    await client.aclose()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000, help="messages per batched phase")
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"log-cost: {tool} not found (apt-get install valgrind redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        redis = Callgrind(Path(tmp))
        try:
            result = asyncio.run(measure(redis, max(100, args.messages)))
        finally:
            redis.stop()
    for name, value in result.items():
        print(f"{name:28s} {value / 1000:8.1f}k instructions per message")
    print("(Redis only: its kernel work for sockets and the AOF is not counted)", file=sys.stderr)


if __name__ == "__main__":
    main()
