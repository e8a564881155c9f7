"""gRPC vs the native protocol, one awaited call at a time:
``scripts/transport-bench [--runs 3] [--calls 3000]``.

One redis-server and one ``aqnode serve`` (``bench.handlers``, 2 shards) from the test
fixtures; per run, the same client code over gRPC (``transport="grpc"``) and over the
node's Unix socket (``aq+unix://``), back to back: ``--calls`` sequential ``await
enqueue(Echo)`` over 100 entities (calls/s), then 1,000 ``enqueue_and_wait(Echo)`` on 20
warm entities (p50, p99). Prints one line per run and transport.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aqnode.client import Client
from bench.handlers import Echo
from tests.node_fixture import running_node
from tests.redis_fixture import session_redis_server


async def measure(address: str, transport: str, calls: int) -> tuple[float, float, float]:
    async with Client(address, transport=transport) as client:
        for i in range(200):  # warm-up: workers, connections
            await client.enqueue_and_wait(Echo(id=f"w{i % 20}", seq=i))
        began = time.perf_counter()
        for i in range(calls):
            await client.enqueue(Echo(id=f"e{i % 100}", seq=i))
        rate = calls / (time.perf_counter() - began)
        latencies = []
        for i in range(1000):
            t = time.perf_counter()
            await client.enqueue_and_wait(Echo(id=f"w{i % 20}", seq=i))
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        return rate, latencies[500] * 1000, latencies[990] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        with (
            session_redis_server(work / "redis") as redis,
            running_node(work / "node", redis.url, handlers=["bench.handlers"]) as node,
        ):
            native = f"aq+unix://{work / 'node' / 'data' / 'native.sock'}"
            for run in range(args.runs):
                for label, address, transport in (
                    ("grpc", node.address, "grpc"),
                    ("native-unix", native, "auto"),
                ):
                    rate, p50, p99 = asyncio.run(measure(address, transport, args.calls))
                    print(
                        f"run {run} {label:12} sequential enqueue {rate:7.0f}/s   "
                        f"enqueue_and_wait p50 {p50:.2f} ms  p99 {p99:.2f} ms",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
