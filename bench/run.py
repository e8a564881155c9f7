"""The benchmark runner: ``scripts/bench [--quick | --full] [--scenario NAME] [--json FILE]``.

It starts its own ``redis-server`` (a free TCP port on 127.0.0.1, a temporary directory,
``appendonly yes`` with ``appendfsync everysec`` like the node's managed Redis; ``--aof
no`` turns it off), its own ``aqnode serve`` (``handlers = ["bench.handlers"]``) and, for
the throughput scenario, the lock-per-entity baseline's worker processes
(``bench/baseline.py``). Scenarios that need another node configuration (1 shard, long
or short idle timeouts) start that node next to it, with its own key prefix.

Scenarios (see BENCHMARKS.md for the method):

- ``throughput``: fire-and-forget to completion, 1,000 entities x 20 messages, ``uniform``
  or ``hot`` (10 % of the entities get 80 % of the messages), 0 ms or 1 ms of awaited
  I/O per handler; aqnode senders ``enqueue_many``, ``pipelined`` (``asyncio.gather`` of
  single ``enqueue`` calls) and ``sequential`` (one ``await enqueue`` at a time); the
  baseline fed by one awaited ``LPUSH`` per message (``lpush``) or pipelined LPUSHes
  (``lpush_pipelined``). Every run of a workload measures aqnode and the baseline back to
  back, and the ratio is taken per run. Costs per message (Redis commands, script
  calls, read events, CPU) come from counters read before and after each run.
- ``realio``: handlers that do real I/O (two awaited ``redis.asyncio`` pipelines per
  message, ``bench/io_handlers.py``), 1,000 entities x 20 round robin; aqnode senders
  ``enqueue_many``, ``sync enqueue`` (one blocking ``SyncClient.enqueue`` per message)
  and ``sequential``, against hash-partitioned Redis lists with one consumer per list
  (``bench/lists_baseline.py``); the ratio per run. ``--realio-pools 8,32,0`` also
  compares the handler's connection pool sizes (``bench/realio.py``).
- ``latency``: ``enqueue_and_wait`` p50/p90/p99: one caller (warm entities, and a new
  entity per call), and ``--latency-callers`` concurrent callers on one Client; then
  durable acknowledgements one call at a time (calls/s): ``await Client.enqueue`` and a
  blocking ``SyncClient.enqueue`` (in a thread), ``--latency-calls`` x 3 each.
- ``shards``: a CPU-bound handler (a pure-Python loop of ``--cpu-ms``) on a 1-shard node
  and on the main node (``--shards``), alternately; the ratio per run.
- ``memory``: one message each to ``--memory-entities`` distinct entities with idle
  workers kept (``worker_idle_timeout_ms`` of an hour); RSS delta per entity.
- ``million``: one message each to ``--million-entities`` distinct entities with a short
  idle timeout; the node's peak RSS and its RSS once every worker is torn down.

``--quick`` (the default) runs throughput (a reduced matrix), realio, latency, shards and
memory in about 3.5 minutes on 2 cores (realio: about 55 s); ``--full`` runs the whole
matrix, bigger sizes, and ``million`` (about 10 minutes).

The benchmark process runs on the same machine as the node and Redis and competes with
them for CPU; on a small machine the figures are the system's, not the node's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
import uvloop

from aqnode.client import Client, SyncClient
from bench import baseline as bl
from bench.handlers import Echo, Marker, Ping
from bench.probe import Probe, percentile, summarize
from bench.procs import (
    ROOT,
    NodeProc,
    NodeSpec,
    RedisProc,
    aqnode_serve,
    redis_server,
    settle,
    tail,
    wait_handled,
    wait_ready,
)
from bench.realio import NATIVE_TIMEOUT_S, RealIo, on_native
from bench.report import ONE_AT_A_TIME, SYNC_ENQUEUE, report
from bench.workload import DISTRIBUTIONS, Workload, calibrate_spin, make_workload

SCENARIOS = ("throughput", "realio", "latency", "shards", "memory", "million")
QUICK_SCENARIOS = ("throughput", "realio", "latency", "shards", "memory")
HANDLERS = {"0ms": 0.0, "1ms": 1.0}  #: handler name -> awaited I/O per message, ms
AQ_SENDERS = ("enqueue_many", "pipelined", "sequential")
BL_PRODUCERS = ("lpush", "lpush_pipelined")
ONE_PER_CALL = ("sequential", "lpush")  #: senders that use --sequential-messages
WAIT_TIMEOUT_S = 600.0  #: seconds an enqueue_and_wait may take (a backed-up queue)
STALL_TIMEOUT_S = 30.0  #: seconds the baseline may make no progress before we give up


@dataclass(frozen=True)
class Group:
    """One workload of the throughput matrix and who is measured on it."""

    distribution: str
    handler: str
    senders: tuple[str, ...]  #: aqnode senders
    producers: tuple[str, ...]  #: baseline producers

    @property
    def name(self) -> str:
        return f"{self.distribution}/{self.handler}"


QUICK_MATRIX = (
    Group("uniform", "0ms", AQ_SENDERS, BL_PRODUCERS),
    Group("hot", "0ms", ("enqueue_many", "pipelined"), ("lpush_pipelined",)),
    Group("uniform", "1ms", ("enqueue_many",), ("lpush_pipelined",)),
    Group("hot", "1ms", ("enqueue_many",), ()),
)
FULL_MATRIX = tuple(Group(d, h, AQ_SENDERS, BL_PRODUCERS) for d in DISTRIBUTIONS for h in HANDLERS)

#: per mode: option -> default (an option given on the command line wins)
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {
        "runs": 3,
        "sequential_messages": 3,
        "latency_calls": 1000,
        "load_calls": 60,
        "cpu_messages": 3,
        "memory_runs": 1,
    },
    "full": {
        "runs": 3,
        "sequential_messages": 20,
        "latency_calls": 2000,
        "load_calls": 200,
        "cpu_messages": 8,
        "memory_runs": 3,
    },
}


# ---- the benchmark -------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A node and a Client connected to it."""

    node: NodeProc
    client: Client


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    server: RedisProc
    main: Endpoint
    probe: Probe
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, scenario: str, name: str, metrics: dict[str, float], **extra: Any) -> None:
        entry = self.results.setdefault(scenario, {}).setdefault(name, {"runs": [], **extra})
        entry["runs"].append(metrics)
        entry["summary"] = summarize(entry["runs"])
        print(f"  {scenario} {name} run {len(entry['runs'])}: {_brief(metrics)}", flush=True)

    def wanted(self, name: str) -> bool:
        return not self.args.only or any(o in name for o in self.args.only)

    @contextlib.contextmanager
    def extra_node(self, spec: NodeSpec) -> Iterator[NodeProc]:
        with aqnode_serve(self.workdir, self.server.url, spec) as node:
            yield node

    # -- throughput --

    async def throughput(self) -> None:
        args = self.args
        groups = []
        for g in FULL_MATRIX if args.full else QUICK_MATRIX:
            senders = tuple(s for s in g.senders if self.wanted(f"{g.name}/{s}"))
            producers = tuple(p for p in g.producers if self.wanted(f"{g.name}/baseline {p}"))
            if senders or producers:
                groups.append(Group(g.distribution, g.handler, senders, producers))
        if not groups:
            return
        pool = None
        if any(g.producers for g in groups):
            config = bl.BaselineConfig(
                self.server.url,
                processes=args.baseline_processes or args.shards,
                concurrency=args.baseline_concurrency,
                lock_sleep_s=args.baseline_lock_sleep,
                blocking_timeout_s=args.baseline_blocking_timeout,
            )
            pool = bl.BaselinePool(config)
            try:
                pool.start()
            except BaseException:
                pool.stop()
                raise
            print(
                f"bench: baseline: {config.processes} worker processes x "
                f"{config.concurrency} consumers (pids {', '.join(map(str, pool.pids()))})"
            )
        producer_redis = aioredis.Redis.from_url(self.server.url)
        try:
            for run in range(args.runs):
                for g in groups:
                    # aqnode and baseline cells take turns: the node tears its idle workers
                    # down (a precondition of its next run) while the baseline runs
                    for sender, producer in itertools.zip_longest(g.senders, g.producers):
                        if sender is not None:
                            await settle(self.main.client)
                            wl = self._workload(f"{g.name}-{sender}-{run}", g, sender)
                            metrics = await self.aq_run(self.main, wl, sender)
                            self.record("throughput", f"{g.name}/{sender}", metrics)
                        if producer is not None:
                            assert pool is not None
                            wl = self._workload(f"bl-{g.name}-{producer}-{run}", g, producer)
                            metrics = await self.baseline_run(pool, producer_redis, wl, producer)
                            self.record("throughput", f"{g.name}/baseline {producer}", metrics)
                    self._ratios(g, run)
        finally:
            await producer_redis.aclose()
            if pool is not None:
                pool.stop()

    def _workload(self, tag: str, g: Group, sender: str) -> Workload:
        per_entity = self.args.messages
        if sender in ONE_PER_CALL and self.args.sequential_messages:
            per_entity = self.args.sequential_messages
        return make_workload(
            tag, self.args.entities, per_entity, g.distribution, io_ms=HANDLERS[g.handler]
        )

    def _ratios(self, g: Group, run: int) -> None:
        """aqnode's rate over the baseline's, both from this run of this workload: the
        batched senders against the best baseline producer, the sequential sender against
        the baseline's one-LPUSH-per-message producer (what its users do)."""
        cells = self.results.get("throughput", {})

        def rate(name: str) -> float | None:
            entry = cells.get(f"{g.name}/{name}")
            if entry is None or len(entry["runs"]) <= run:
                return None
            return float(entry["runs"][run]["msgs_per_s"])

        rates = {p: rate(f"baseline {p}") for p in g.producers}
        known = {p: r for p, r in rates.items() if r}
        if not known:
            return
        best = max(known, key=lambda p: known[p])
        for sender in g.senders:
            ours = rate(sender)
            if ours is None:
                continue
            vs = "lpush" if sender == "sequential" and "lpush" in known else best
            entry = self.results.setdefault("ratios", {}).setdefault(
                f"{g.name}/{sender}", {"runs": [], "vs": ""}
            )
            entry["runs"].append({"ratio": ours / known[vs]})
            entry["vs"] = f"baseline {vs}"
            entry["summary"] = summarize(entry["runs"])

    async def aq_run(self, target: Endpoint, wl: Workload, sender: str) -> dict[str, float]:
        """Send the workload, then one Marker per entity with ``enqueue_and_wait``: FIFO per
        entity means all of an entity's Pings have run when its Marker returns."""
        client, args = target.client, self.args
        send: Callable[[list[Ping]], Awaitable[None]]
        if sender == "enqueue_many":

            async def send(pings: list[Ping]) -> None:
                for start in range(0, len(pings), args.chunk):
                    await client.enqueue_many(pings[start : start + args.chunk])

        elif sender == "pipelined":

            async def send(pings: list[Ping]) -> None:
                enqueue = client.enqueue
                for start in range(0, len(pings), args.window):
                    await asyncio.gather(*(enqueue(p) for p in pings[start : start + args.window]))

        elif sender == "sequential":

            async def send(pings: list[Ping]) -> None:
                enqueue = client.enqueue
                for p in pings:
                    await enqueue(p)

        else:
            raise ValueError(sender)
        ids = wl.ids
        messages = len(wl.pings) + len(ids)  # the Markers are messages the node runs too
        pids = target.node.pids()
        before = self.probe.snapshot(pids)
        await send(wl.pings)
        acked = time.perf_counter()
        tallies = await asyncio.gather(
            *(client.enqueue_and_wait(Marker(id=eid), timeout=WAIT_TIMEOUT_S) for eid in ids)
        )
        after = self.probe.snapshot(pids)
        missing = sum(wl.counts[eid] - t.pings for eid, t in zip(ids, tallies, strict=True))
        if missing:
            raise SystemExit(f"bench: {missing} Pings had not run when their entity's Marker did")
        elapsed = after.at - before.at
        return {
            "messages": float(len(wl.pings)),
            "elapsed_s": elapsed,
            "msgs_per_s": len(wl.pings) / elapsed,
            "acked_s": acked - before.at,
            "acked_per_s": len(wl.pings) / (acked - before.at),
            "out_of_order": float(sum(t.out_of_order for t in tallies)),
            "entities_out_of_order": float(sum(1 for t in tallies if t.out_of_order)),
            "overlaps": float(sum(t.overlaps for t in tallies)),
            **self.probe.costs(before, after, messages),
        }

    async def baseline_run(
        self, pool: bl.BaselinePool, producer: aioredis.Redis, wl: Workload, kind: str
    ) -> dict[str, float]:
        total = len(wl.pings)
        pool.reset()
        pids = pool.pids()
        before = self.probe.snapshot(pids)
        await bl.produce(
            producer,
            pool.config.queue,
            wl.pings,
            pipelined=kind == "lpush_pipelined",
            chunk=self.args.chunk,
        )
        acked = time.perf_counter()
        done, progress_at = 0, acked
        while done < total:
            now = time.perf_counter()
            if pool.done() > done:
                done, progress_at = pool.done(), now
            elif now - progress_at > STALL_TIMEOUT_S:
                raise SystemExit(
                    f"bench: the baseline ran {done} of {total} jobs and then nothing for "
                    f"{STALL_TIMEOUT_S:.0f}s"
                )
            pool.check_alive()
            await asyncio.sleep(0.002)
        after = self.probe.snapshot(pids)
        stats = pool.stats()
        order = bl.order_report(pool.collect(), wl.counts)
        if order["missing"] or order["duplicates"]:
            print(f"bench: warning: baseline run lost or repeated jobs: {order}", file=sys.stderr)
        elapsed = after.at - before.at
        return {
            "messages": float(total),
            "elapsed_s": elapsed,
            "msgs_per_s": total / elapsed,
            "acked_s": acked - before.at,
            "acked_per_s": total / (acked - before.at),
            **order,
            "requeued": float(stats["requeued"]),
            "lock_wait_ms_per_msg": stats["lock_wait_us"] / 1000 / total,
            **self.probe.costs(before, after, total),
        }

    # -- realio --

    async def realio(self) -> None:
        """Handlers that do real Redis I/O, against hash-partitioned lists (bench/realio.py)."""
        await RealIo(self).run()

    # -- latency --

    async def latency(self) -> None:
        args = self.args
        variants = [
            ("1 caller, warm", 1, True),
            ("1 caller, cold", 1, False),
            (f"{args.latency_callers} callers, warm", args.latency_callers, True),
        ]
        variants = [v for v in variants if self.wanted(v[0])]
        one_at_a_time = [s for s in ONE_AT_A_TIME if self.wanted(s)]
        sync = None
        if SYNC_ENQUEUE in one_at_a_time:
            sync = await asyncio.to_thread(SyncClient, self.main.node.address)
        try:
            for run in range(args.runs):
                for name, callers, warm in variants:
                    await settle(self.main.client)
                    self.record("latency", name, await self._latency_run(run, callers, warm))
                for name in one_at_a_time:
                    await settle(self.main.client)
                    self.record("latency", name, await self._one_at_a_time(run, name, sync))
        finally:
            if sync is not None:
                await asyncio.to_thread(sync.close)

    async def _one_at_a_time(
        self, run: int, name: str, sync: SyncClient | None
    ) -> dict[str, float]:
        """Durable acknowledgements, one call at a time (issue 11): ``--latency-calls`` x
        3 ``enqueue(Echo)`` over 100 warm entities, each returning once the message is in
        the log."""
        args, client = self.args, self.main.client
        n = args.latency_calls * 3
        tag = f"one{'s' if sync is not None and name == SYNC_ENQUEUE else 'a'}-{run}"
        echoes = [Echo(id=f"{tag}-{i % 100}", seq=i) for i in range(n)]
        warm, echoes = echoes[:100], echoes[100:]
        if name == SYNC_ENQUEUE:
            assert sync is not None
            await asyncio.to_thread(_warm_sync, sync, warm)
        else:
            for e in warm:  # the entities' workers, the client's connection
                await client.enqueue_and_wait(e, timeout=30.0)
        samples: list[float] = []

        def timed(enqueue: Callable[[Echo], Any]) -> None:
            for e in echoes:
                t0 = time.perf_counter()
                enqueue(e)
                samples.append(time.perf_counter() - t0)

        pids = self.main.node.pids()
        before = self.probe.snapshot(pids)
        if name == SYNC_ENQUEUE:
            assert sync is not None
            await asyncio.to_thread(timed, sync.enqueue)
        else:
            for e in echoes:
                t0 = time.perf_counter()
                await client.enqueue(e)
                samples.append(time.perf_counter() - t0)
        after = self.probe.snapshot(pids)
        ms = sorted(s * 1000 for s in samples)
        return {
            "calls": float(len(ms)),
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1],
            "mean_ms": statistics.fmean(ms),
            "calls_per_s": len(ms) / (after.at - before.at),
            **self.probe.costs(before, after, len(ms)),
        }

    async def _latency_run(self, run: int, callers: int, warm: bool) -> dict[str, float]:
        args, client = self.args, self.main.client
        calls = args.latency_calls if callers == 1 else args.load_calls
        per_caller = max(1, args.latency_entities // callers)
        tag = f"lat{callers}{'w' if warm else 'c'}-{run}"

        def entity(caller: int, i: int) -> str:
            if warm:
                return f"{tag}-{caller}-{i % per_caller}"
            return f"{tag}-{caller}-{i}"

        call = client.enqueue_and_wait
        # warm-up: the path, and (warm) every entity the timed calls use
        warmup = max(args.latency_warmup // callers, per_caller if warm else 1)

        async def caller_warmup(c: int) -> None:
            for i in range(warmup):
                await call(Echo(id=entity(c, i) if warm else f"{tag}-wu-{c}-{i}"))

        await asyncio.gather(*(caller_warmup(c) for c in range(callers)))
        samples: list[float] = []

        async def caller(c: int) -> None:
            for seq in range(calls):
                t0 = time.perf_counter()
                reply = await call(Echo(id=entity(c, seq), seq=seq), timeout=30.0)
                samples.append(time.perf_counter() - t0)
                if reply != seq:
                    raise SystemExit(f"bench: Echo {seq} came back as {reply!r}")

        pids = self.main.node.pids()
        before = self.probe.snapshot(pids)
        await asyncio.gather(*(caller(c) for c in range(callers)))
        after = self.probe.snapshot(pids)
        ms = sorted(s * 1000 for s in samples)
        n = len(ms)
        return {
            "calls": float(n),
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1],
            "mean_ms": statistics.fmean(ms),
            "calls_per_s": n / (after.at - before.at),
            **self.probe.costs(before, after, n),
        }

    # -- shards --

    async def shards(self) -> None:
        args = self.args
        if args.shards < 2:
            print("bench: shards: skipped (the main node has 1 shard; use --shards 2)")
            return
        iterations = calibrate_spin(args.cpu_ms)
        print(f"bench: shards: {iterations:,} loop iterations ~ {args.cpu_ms} ms here")
        spec = NodeSpec("1shard", 1, args.idle_timeout_ms, args.heartbeat_ms, "aqs1")
        with self.extra_node(spec) as node:
            await wait_ready(node)
            async with Client(node.address) as client:
                one = Endpoint(node, client)
                many = f"{args.shards} shards"
                for run in range(args.runs):
                    # alternate the order, so that a drift in the machine's load does not
                    # favour one side
                    pair = [("1 shard", one), (many, self.main)]
                    if run % 2:
                        pair.reverse()
                    rates = {}
                    for name, target in pair:
                        await settle(target.client)
                        wl = make_workload(
                            f"cpu-{name[0]}-{run}",
                            args.entities,
                            args.cpu_messages,
                            "uniform",
                            spin_iterations=iterations,
                        )
                        metrics = await self.aq_run(target, wl, "enqueue_many")
                        self.record("shards", name, metrics)
                        rates[name] = metrics["msgs_per_s"]
                    self.record("shards", "ratio", {"ratio": rates[many] / rates["1 shard"]})

    # -- memory --

    async def _send_echoes(self, client: Client, tag: str, count: int) -> None:
        chunk = self.args.chunk
        for start in range(0, count, chunk):
            batch = [Echo(id=f"{tag}-{i}") for i in range(start, min(count, start + chunk))]
            await client.enqueue_many(batch)

    async def memory(self) -> None:
        args = self.args
        n, warm = args.memory_entities, args.memory_warmup
        for run in range(args.memory_runs):
            spec = NodeSpec(f"memory{run}", args.shards, 3_600_000, args.heartbeat_ms, f"aqm{run}")
            with self.extra_node(spec) as node:
                await wait_ready(node)
                async with Client(node.address) as client:
                    # warm-up: the code paths and the allocator, with workers that stay
                    await self._send_echoes(client, f"mw{run}", warm)
                    await wait_handled(client, warm, WAIT_TIMEOUT_S)
                    await asyncio.sleep(1.0)
                    rss0 = node.rss()
                    redis0 = self.probe.redis_memory()
                    t0 = time.perf_counter()
                    await self._send_echoes(client, f"m{run}", n)
                    status = await wait_handled(client, warm + n, WAIT_TIMEOUT_S)
                    elapsed = time.perf_counter() - t0
                    await asyncio.sleep(1.0)
                    status = await client.status(timeout=10.0)
                    rss1 = node.rss()
                    redis1 = self.probe.redis_memory()
            sup = next(iter(rss0))
            shard_delta = sum(rss1.get(p, 0) - v for p, v in rss0.items() if p != sup)
            sup_delta = rss1.get(sup, 0) - rss0[sup]
            self.record(
                "memory",
                "idle",
                {
                    "entities": float(n),
                    "workers": float(sum(s.workers for s in status.shards)),
                    "shard_bytes_per_entity": shard_delta / n,
                    "supervisor_bytes_per_entity": sup_delta / n,
                    "node_bytes_per_entity": (shard_delta + sup_delta) / n,
                    "redis_bytes_per_entity": (redis1 - redis0) / n,
                    "node_rss_before": float(sum(rss0.values())),
                    "node_rss_after": float(sum(rss1.values())),
                    "shards_rss_after": float(sum(v for p, v in rss1.items() if p != sup)),
                    "msgs_per_s": n / elapsed,
                },
            )

    async def million(self) -> None:
        args = self.args
        n = args.million_entities
        spec = NodeSpec("million", args.shards, args.million_idle_ms, args.heartbeat_ms, "aqM")
        with self.extra_node(spec) as node:
            await wait_ready(node)
            async with Client(node.address) as client:
                await asyncio.sleep(1.0)
                start = node.rss()
                peak = {"total": sum(start.values()), "process": max(start.values())}

                async def sample() -> None:
                    while True:
                        rss = node.rss()
                        peak["total"] = max(peak["total"], sum(rss.values()))
                        peak["process"] = max(peak["process"], max(rss.values(), default=0))
                        await asyncio.sleep(0.25)

                sampler = asyncio.get_running_loop().create_task(sample())
                try:
                    t0 = time.perf_counter()
                    last_print = t0
                    for begin in range(0, n, args.chunk):
                        end = min(n, begin + args.chunk)
                        await client.enqueue_many([Echo(id=f"M-{i}") for i in range(begin, end)])
                        if time.perf_counter() - last_print > 10:
                            last_print = time.perf_counter()
                            rate = end / (last_print - t0)
                            print(
                                f"  million: {end:,} sent ({rate:,.0f}/s), peak RSS so far "
                                f"{peak['total'] / 2**20:,.0f} MiB",
                                flush=True,
                            )
                    await wait_handled(client, n, WAIT_TIMEOUT_S)
                    handled = time.perf_counter()
                    deadline = handled + 120 + 2 * args.million_idle_ms / 1000
                    while True:
                        status = await client.status(timeout=10.0)
                        workers = sum(s.workers for s in status.shards)
                        if workers == 0 or time.perf_counter() > deadline:
                            break
                        await asyncio.sleep(0.25)
                    idle = time.perf_counter()
                    await asyncio.sleep(2.0)
                    final = node.rss()
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
        self.record(
            "million",
            "million",
            {
                "entities": float(n),
                "rss_start": float(sum(start.values())),
                "rss_peak": float(peak["total"]),
                "rss_peak_process": float(peak["process"]),
                "rss_final": float(sum(final.values())),
                "workers_final": float(workers),
                "msgs_per_s": n / (handled - t0),
                "teardown_s": idle - handled,
                "redis_used_after": float(self.probe.redis_memory()),
            },
        )


def _brief(metrics: dict[str, float]) -> str:
    keys = (
        "msgs_per_s",
        "elapsed_s",
        "out_of_order",
        "p50_ms",
        "p99_ms",
        "calls_per_s",
        "system_cpu_s_per_1k",
        "redis_reads_per_msg",
        "ratio",
        "shard_bytes_per_entity",
        "node_bytes_per_entity",
        "rss_peak",
        "rss_final",
    )
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def _warm_sync(sync: SyncClient, warm: list[Echo]) -> None:
    """Start the entities' workers and move ``sync`` to the node's native socket (its
    blocking path), as a SyncClient left running would be."""
    for e in warm:
        sync.enqueue_and_wait(e, timeout=30.0)
    deadline = time.monotonic() + NATIVE_TIMEOUT_S
    while not on_native(sync._client, upgrade_ok=True) and time.monotonic() < deadline:
        sync.enqueue_and_wait(warm[0], timeout=30.0)
    if not on_native(sync._client, upgrade_ok=True):
        print("bench: warning: the SyncClient is still on gRPC after warm-up", file=sys.stderr)


# ---- machine and versions ------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine(server: RedisProc) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with server.client() as client:
        redis_version = client.info("server").get("redis_version", "?")
    packages = {}
    for name in ("aqnode", "grpcio", "protobuf", "msgspec", "uvloop", "redis", "psutil"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "?"
    return {
        "aqnode_commit": _git("rev-parse", "HEAD"),
        "aqnode_dirty_files": _git("status", "--porcelain", "--", "aqnode").splitlines(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "packages": packages,
    }


# ---- main ----------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace, workdir: Path, node: NodeProc, server: RedisProc
) -> dict[str, Any]:
    status = await wait_ready(node)
    print(
        f"bench: node {status.server_id} ready at {node.address}: "
        f"{len(status.shards)} shards (pids {', '.join(str(s.pid) for s in status.shards)}), "
        f"supervisor pid {status.pid}, redis {server.url} "
        f"(appendonly {'yes' if args.aof else 'no'})",
        flush=True,
    )
    probe = Probe(server)
    async with Client(node.address) as client:
        bench = Bench(args, workdir, server, Endpoint(node, client), probe)
        try:
            for scenario in args.scenarios:
                started = time.monotonic()
                print(f"bench: {scenario}", flush=True)
                await getattr(bench, scenario)()
                print(f"bench: {scenario} took {time.monotonic() - started:.0f}s", flush=True)
            status = await client.status(timeout=5.0)
            restarts = sum(s.restarts for s in status.shards)
            if restarts:
                print(f"bench: warning: shards restarted {restarts} times during the benchmark")
        finally:
            probe.close()
    return bench.results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark aqnode against a lock-per-entity baseline; starts its own "
        "redis-server, aqnode serve nodes and baseline workers. Prints Markdown tables.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="(default) reduced matrix and sizes, no million run: about 3.5 minutes",
    )
    mode.add_argument(
        "--full", action="store_true", help="the whole matrix, bigger sizes, and million"
    )
    p.add_argument(
        "--scenario",
        dest="scenarios",
        action="append",
        choices=SCENARIOS,
        help="run only this (repeatable); default: the mode's scenarios",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only throughput / realio cells and latency variants whose name contains "
        "TEXT, e.g. 'uniform/0ms', 'enqueue_many', 'baseline', '1 caller' (repeatable); a "
        "scenario's name (e.g. 'realio') selects that scenario, like --scenario",
    )
    p.add_argument("--runs", type=int, help="runs per measurement (3)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON here")
    p.add_argument("--shards", type=int, default=2, help="the main node's shards (2)")
    p.add_argument("--aof", choices=("yes", "no"), default="yes", help="Redis appendonly (yes)")
    p.add_argument("--entities", type=int, default=1000, help="entities per workload (1000)")
    p.add_argument("--messages", type=int, default=20, help="messages per entity (20)")
    p.add_argument(
        "--sequential-messages",
        type=int,
        metavar="N",
        help="messages per entity for the one-call-per-message senders (aqnode sequential, "
        "baseline lpush): quick 3, full 20",
    )
    p.add_argument("--chunk", type=int, default=1000, help="enqueue_many / pipeline chunk (1000)")
    p.add_argument("--window", type=int, default=1000, help="pipelined: calls per gather (1000)")
    p.add_argument(
        "--latency-calls", type=int, help="latency, one caller: timed calls (quick 1000, full 2000)"
    )
    p.add_argument(
        "--load-calls", type=int, help="latency under load: timed calls per caller (60 / 200)"
    )
    p.add_argument(
        "--latency-callers", type=int, default=32, help="latency under load: callers (32)"
    )
    p.add_argument("--latency-warmup", type=int, default=200, help="latency: warm-up calls (200)")
    p.add_argument(
        "--latency-entities", type=int, default=100, help="latency, warm: entities cycled (100)"
    )
    p.add_argument("--cpu-ms", type=float, default=1.0, help="shards: handler CPU per message")
    p.add_argument("--cpu-messages", type=int, help="shards: messages per entity (quick 3, full 8)")
    p.add_argument(
        "--memory-entities", type=int, default=100_000, help="memory: idle entities (100,000)"
    )
    p.add_argument("--memory-warmup", type=int, default=2000, help="memory: warm-up entities")
    p.add_argument("--memory-runs", type=int, help="memory: runs, a fresh node each (1 / 3)")
    p.add_argument(
        "--million-entities", type=int, default=1_000_000, help="million: entities (1,000,000)"
    )
    p.add_argument(
        "--million-idle-ms", type=int, default=1000, help="million: worker_idle_timeout_ms (1000)"
    )
    p.add_argument(
        "--idle-timeout-ms",
        type=int,
        default=1000,
        help="worker_idle_timeout_ms of the throughput/latency/shards nodes (1000)",
    )
    p.add_argument("--heartbeat-ms", type=int, default=200, help="shard_heartbeat_ms (200)")
    p.add_argument(
        "--baseline-processes", type=int, help="baseline worker processes (default: --shards)"
    )
    p.add_argument(
        "--baseline-concurrency",
        type=int,
        default=10,
        help="baseline consumers per process (10, arq's max_jobs default)",
    )
    p.add_argument(
        "--baseline-lock-sleep",
        type=float,
        default=0.01,
        help="seconds between a baseline lock waiter's polls (0.01; redis-py's default is 0.1)",
    )
    p.add_argument(
        "--baseline-blocking-timeout",
        type=float,
        default=10.0,
        help="seconds a baseline job waits for its lock before it is requeued (10)",
    )
    p.add_argument(
        "--realio-pool",
        type=int,
        default=32,
        help="realio: the handler's Redis connections per process (32; 0 = unbounded)",
    )
    p.add_argument(
        "--realio-pools",
        type=_int_list,
        default=[],
        metavar="N,N,...",
        help="realio: also measure enqueue_many on a node per pool size, e.g. 8,32,0",
    )
    p.add_argument("--realio-lists", type=int, default=16, help="realio baseline: Redis lists (16)")
    p.add_argument(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the benchmark process' event loop (default asyncio)",
    )
    p.add_argument("--workdir", type=Path, help="keep the nodes' and Redis' files here")
    args = p.parse_args(argv)
    named = [o for o in args.only or () if o in SCENARIOS]
    if named:  # --only SCENARIO: that scenario, all of its cells
        args.scenarios = list(dict.fromkeys([*(args.scenarios or ()), *named]))
        args.only = [o for o in args.only if o not in SCENARIOS] or None
    args.mode = "full" if args.full else "quick"
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.scenarios:
        args.scenarios = list(SCENARIOS if args.full else QUICK_SCENARIOS)
    args.aof = args.aof == "yes"
    if min(args.runs, args.entities, args.messages, args.memory_runs) < 1:
        p.error("--runs, --entities, --messages and --memory-runs must be at least 1")
    return args


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (also when started in the background, where SIGINT arrives ignored) and
    # SIGTERM both end up in the clean-up below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aqbench-")))
        spec = NodeSpec("main", args.shards, args.idle_timeout_ms, args.heartbeat_ms, "aq")
        try:
            server = stack.enter_context(redis_server(workdir / "redis", args.aof))
            node = stack.enter_context(aqnode_serve(workdir, server.url, spec))
            info = machine(server)
            print(
                f"bench: {args.mode}: {', '.join(args.scenarios)}; {info['cpu_model']}, "
                f"{info['nproc']} CPUs, Python {info['python']}, redis-server "
                f"{info['redis_server']}, aqnode {info['packages']['aqnode']}",
                flush=True,
            )
            started = time.monotonic()
            if args.client_loop == "uvloop":
                results = uvloop.run(run_all(args, workdir, node, server))
            else:
                results = asyncio.run(run_all(args, workdir, node, server))
            took = time.monotonic() - started
        except KeyboardInterrupt:
            print("\nbench: interrupted; stopping the nodes and Redis", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return 130
        except BaseException:
            with contextlib.suppress(NameError):
                print(f"bench: node log tail:\n{tail(node.log_path)}", file=sys.stderr)
            raise
    print()
    print(report(results, args))
    print(f"\nbench: {took:.0f}s of scenarios")
    if args.json is not None:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps({"machine": info, "options": options, "results": results}, indent=2) + "\n"
        )
        print(f"bench: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
