"""The cost of TLS (issue 10): ``scripts/tls-bench [--runs 3] [--quick] [--json FILE]``.

It starts one ``redis-server`` (127.0.0.1, a free port, a temporary directory,
``appendonly yes``/``everysec`` like ``scripts/bench``) and three ``aqnode serve`` nodes
on it, identical but for ``[tls]`` (same shards, same entity settings; each its own
``server_id``, ``key_prefix`` and data directory):

- ``plain``: plaintext gRPC, no ``[tls]``;
- ``tls``: ``[tls] cert_file/key_file/ca_file``, the clients trust the CA (one-way TLS);
- ``mtls``: the same plus ``require_client_cert = true``, the client presents a
  certificate (mutual TLS).

Every Client is made with ``transport="grpc"`` (where the Client has that option): the
default, ``"auto"``, moves to the node's native protocol, which on the same host is its
Unix socket, without TLS; [tls] protects the gRPC port measured here.

Certificates are made with ``openssl`` in the work directory (EC P-256, the README's
recipe: a CA, a node certificate for 127.0.0.1, a client certificate).

Measurements, on all three nodes in turn, one long-lived ``Client`` per node; who goes
first rotates every run and every block, so that a drift in the machine's load (it is
shared) favours no side:

- ``throughput``: fire-and-forget to completion, ``--entities`` x ``--messages`` (1,000 x
  20) ``Ping`` (no-op handler) sent with ``enqueue_many`` in chunks of 1,000, then one
  ``Marker`` per entity with ``enqueue_and_wait`` (all at once); FIFO per entity means
  the entity's Pings have all run when its Marker returns. msgs/s counts the Pings.
  ``--rounds`` (3) rounds per run, in each one workload per node, one node after the
  other, every node settled (idle, no worker) before each; a run's figure of a node is
  the median of its rounds.
- ``sequential``: ``--sequential-calls`` (3,000) ``await client.enqueue(ping)`` one at a
  time over 1,000 entities, in ``--blocks`` (10) blocks per node, the nodes' blocks
  interleaved; calls/s over the blocks' summed time.
- ``latency``: ``enqueue_and_wait(Echo)``, one caller, cycling over 100 entities warmed
  on every node first (200 calls), then ``--latency-calls`` (1,000) timed calls per node
  in interleaved blocks; nearest-rank p50/p90/p99. ``worker_idle_timeout_ms`` is 2,000
  so that the entities stay warm while the other nodes take their turn.
- ``connect``: ``--connects`` (50) times per node, round robin over the nodes, a new
  ``Client`` and its first ``enqueue_and_wait(Echo)`` on an entity whose worker is up
  (channel, TCP, TLS handshake, Session stream and the call; the close is not timed):
  what a connection costs once.

Every figure is the median (min-max) of the runs; a ratio TLS/plain is taken per run
between measurements made one right after the other, then summarized the same way.
Node CPU (supervisor; shards) and the benchmark process' CPU per 1,000 messages come from
psutil before and after each timed part (``bench/probe.py``). All traffic stays on
127.0.0.1; every process started dies with the benchmark (``bench/procs.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqnode.client import Client, Tls
from bench.handlers import Echo, Marker
from bench.probe import Probe, Snapshot, percentile, summarize
from bench.procs import (
    NodeProc,
    NodeSpec,
    RedisProc,
    aqnode_serve,
    redis_server,
    settle,
    tail,
    wait_ready,
)
from bench.report import cell, md_table
from bench.run import machine
from bench.workload import make_workload

VARIANTS = ("plain", "tls", "mtls")
LABELS = {"plain": "plain", "tls": "TLS", "mtls": "mutual TLS"}
MEASUREMENTS = ("throughput", "sequential", "latency", "connect")
WAIT_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 30.0
LATENCY_ENTITIES = 100
CONNECT_ENTITIES = 10

#: per mode: option -> default (an option given on the command line wins)
MODE_DEFAULTS: dict[str, dict[str, int]] = {
    "normal": {
        "runs": 3,
        "entities": 1000,
        "messages": 20,
        "sequential_calls": 3000,
        "latency_calls": 1000,
        "latency_warmup": 200,
        "connects": 50,
        "rounds": 3,
    },
    "quick": {
        "runs": 1,
        "entities": 300,
        "messages": 10,
        "sequential_calls": 500,
        "latency_calls": 300,
        "latency_warmup": 100,
        "connects": 10,
        "rounds": 1,
    },
}


# ---- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=directory, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: openssl {' '.join(args)} failed:\n{done.stderr}")


def _leaf(directory: Path, name: str, usage: str, san: str | None) -> tuple[Path, Path]:
    _openssl(
        directory,
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
    )  # fmt: skip
    lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    (directory / f"{name}.ext").write_text("\n".join(lines) + "\n")
    _openssl(
        directory,
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
    )  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_pki(directory: Path) -> Pki:
    """A CA, a node certificate for 127.0.0.1 (server and client use: the README's
    recipe), a client-only certificate; EC P-256 keys, made with ``openssl``."""
    if shutil.which("openssl") is None:
        raise SystemExit("bench: openssl is not on PATH (it makes the certificates)")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        directory,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", "/CN=aqnode-bench-ca",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    node = _leaf(directory, "node", "serverAuth,clientAuth", "IP:127.0.0.1,DNS:localhost")
    client = _leaf(directory, "client", "clientAuth", None)
    return Pki(directory / "ca.pem", *node, *client)


def specs(args: argparse.Namespace, pki: Pki) -> dict[str, NodeSpec]:
    tls: tuple[tuple[str, bool | int | str], ...] = (
        ("cert_file", str(pki.node_cert)),
        ("key_file", str(pki.node_key)),
        ("ca_file", str(pki.ca)),
    )
    common = (args.shards, args.idle_timeout_ms, args.heartbeat_ms)
    return {
        "plain": NodeSpec("plain", *common, key_prefix="aqp"),
        "tls": NodeSpec("tls", *common, key_prefix="aqt", tls=tls),
        "mtls": NodeSpec(
            "mtls", *common, key_prefix="aqmt", tls=(*tls, ("require_client_cert", True))
        ),
    }


def grpc_only() -> dict[str, Any]:
    """``transport="grpc"`` where the Client has that option: its default ("auto") moves
    to the node's native protocol, on this host its Unix socket, which has no TLS; this
    benchmark measures the gRPC port, the one ``[tls]`` protects."""
    if "transport" in inspect.signature(Client).parameters:
        return {"transport": "grpc"}
    return {}


def client_options(variant: str, pki: Pki) -> dict[str, Any]:
    options = grpc_only()
    if variant == "tls":
        options["tls"] = Tls(ca_file=str(pki.ca))
    elif variant == "mtls":
        options["tls"] = Tls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    return options


# ---- the benchmark -------------------------------------------------------------------------


@dataclass
class Target:
    """A node, the options its Clients need, and the benchmark's long-lived Client."""

    variant: str
    node: NodeProc
    options: dict[str, Any]
    client: Client


@dataclass
class Meter:
    """One variant's timed parts in a measurement (maybe several blocks, interleaved with
    the other variants'): their time and CPU seconds summed, and latency samples."""

    elapsed: float = 0.0
    supervisor: float = 0.0
    shards: float = 0.0
    bench: float = 0.0
    redis: float = 0.0
    busy: float = 0.0  #: the whole machine's busy CPU seconds
    samples: list[float] = field(default_factory=list)

    def add(self, before: Snapshot, after: Snapshot) -> None:
        each = [after.cpu[p] - before.cpu[p] for p in before.cpu if p in after.cpu]
        self.elapsed += after.at - before.at
        self.supervisor += each[0] if each else 0.0
        self.shards += sum(each[1:])
        self.bench += after.client_cpu - before.client_cpu
        self.redis += after.redis_cpu - before.redis_cpu
        self.busy += after.system_busy - before.system_busy

    def cpu(self, count: int) -> dict[str, float]:
        """CPU ms per 1,000 messages (or calls): the node's supervisor, its shards, the
        benchmark process (the client side of TLS), Redis; and what the rest of the
        machine used meanwhile, in % of one CPU (the other nodes' idle ticks, and other
        people's work on this shared machine)."""
        ms_per_1k = 1_000_000 / count
        ours = self.supervisor + self.shards + self.bench + self.redis
        return {
            "supervisor_cpu_ms_per_1k": self.supervisor * ms_per_1k,
            "shards_cpu_ms_per_1k": self.shards * ms_per_1k,
            "bench_cpu_ms_per_1k": self.bench * ms_per_1k,
            "redis_cpu_ms_per_1k": self.redis * ms_per_1k,
            "other_cpu_pct": max(0.0, 100.0 * (self.busy - ours) / self.elapsed),
        }


def blocks(total: int, count: int) -> list[range]:
    """``range(total)`` cut into ``count`` nearly equal consecutive blocks."""
    count = max(1, min(count, total))
    edges = [total * i // count for i in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(edges)]


def rotated(order: list[str], by: int) -> list[str]:
    by %= len(order)
    return order[by:] + order[:by]


@dataclass
class Bench:
    args: argparse.Namespace
    targets: dict[str, Target]
    probe: Probe
    #: measurement -> variant (or "tls/plain", "mtls/plain") -> one dict per run
    results: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)

    def record(self, measurement: str, name: str, metrics: dict[str, float]) -> None:
        runs = self.results.setdefault(measurement, {}).setdefault(name, [])
        runs.append(metrics)
        brief = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in BRIEF)
        print(f"  {measurement} {name} run {len(runs)}: {brief}", flush=True)

    async def settle_all(self) -> None:
        """No live message and no entity worker on any node: nothing of the previous
        measurement (idle workers' teardown) runs during the next."""
        for target in self.targets.values():
            await settle(target.client)

    async def run(self) -> None:
        for run in range(self.args.runs):
            # who goes first rotates every run (and every block within a run), so that a
            # drift in the machine's load favours no side
            order = rotated(list(VARIANTS), run)
            for measurement in self.args.measurements:
                await self.settle_all()
                measured: dict[str, dict[str, float]] = await getattr(self, measurement)(run, order)
                for variant in VARIANTS:
                    self.record(measurement, variant, measured[variant])
                for variant in VARIANTS[1:]:
                    ratios = {
                        k: measured[variant][k] / measured["plain"][k]
                        for k in RATIO_KEYS[measurement]
                        if measured["plain"].get(k)
                    }
                    self.record(measurement, f"{variant}/plain", ratios)

    async def throughput(self, run: int, order: list[str]) -> dict[str, dict[str, float]]:
        """``--rounds`` rounds, each one workload per variant, one after the other (who
        goes first rotates), every node settled before each; the run's figure of a
        variant is the median of its rounds."""
        rounds: dict[str, list[dict[str, float]]] = {v: [] for v in order}
        for r in range(self.args.rounds):
            for variant in rotated(order, r):
                await self.settle_all()
                metrics = await self._throughput(self.targets[variant], f"{run}-{r}")
                rounds[variant].append(metrics)
        return {
            v: {k: s["median"] for k, s in summarize(runs).items()} for v, runs in rounds.items()
        }

    async def _throughput(self, target: Target, tag: str) -> dict[str, float]:
        args, client = self.args, target.client
        wl = make_workload(f"tp-{target.variant}-{tag}", args.entities, args.messages, "uniform")
        ids = wl.ids
        pids = target.node.pids()
        meter = Meter()
        before = self.probe.snapshot(pids)
        for start in range(0, len(wl.pings), args.chunk):
            await client.enqueue_many(wl.pings[start : start + args.chunk])
        acked = time.perf_counter()
        tallies = await asyncio.gather(
            *(client.enqueue_and_wait(Marker(id=eid), timeout=WAIT_TIMEOUT_S) for eid in ids)
        )
        after = self.probe.snapshot(pids)
        meter.add(before, after)
        missing = sum(wl.counts[eid] - t.pings for eid, t in zip(ids, tallies, strict=True))
        disorder = sum(t.out_of_order + t.overlaps for t in tallies)
        if missing or disorder:
            raise SystemExit(
                f"bench: {target.variant}: {missing} Pings missing, {disorder} out of order "
                "or overlapping when the Markers returned"
            )
        return {
            "messages": float(len(wl.pings)),
            "elapsed_s": meter.elapsed,
            "msgs_per_s": len(wl.pings) / meter.elapsed,
            "sent_per_s": len(wl.pings) / (acked - before.at),
            **meter.cpu(len(wl.pings) + len(ids)),  # the Markers are messages too
        }

    async def sequential(self, run: int, order: list[str]) -> dict[str, dict[str, float]]:
        """``--blocks`` blocks of awaited ``enqueue`` calls per variant, interleaved."""
        args = self.args
        calls = args.sequential_calls
        per_entity = -(-calls // args.entities)
        pings = {
            v: make_workload(f"seq-{v}-{run}", args.entities, per_entity, "uniform").pings[:calls]
            for v in order
        }
        pids = {v: self.targets[v].node.pids() for v in order}
        meters = {v: Meter() for v in order}
        for b, block in enumerate(blocks(calls, args.blocks)):
            for variant in rotated(order, b):
                enqueue = self.targets[variant].client.enqueue
                todo = pings[variant][block.start : block.stop]
                before = self.probe.snapshot(pids[variant])
                for ping in todo:
                    await enqueue(ping)
                meters[variant].add(before, self.probe.snapshot(pids[variant]))
        return {
            v: {"calls": float(calls), "calls_per_s": calls / m.elapsed, **m.cpu(calls)}
            for v, m in meters.items()
        }

    async def latency(self, run: int, order: list[str]) -> dict[str, dict[str, float]]:
        """One caller: ``--blocks`` blocks of ``enqueue_and_wait`` per variant, interleaved,
        after a warm-up of every entity on every node."""
        args = self.args
        tag = f"lat-{run}"

        def echo(variant: str, seq: int) -> Echo:
            return Echo(id=f"{tag}-{variant}-{seq % LATENCY_ENTITIES}", seq=seq)

        for variant in order:
            call = self.targets[variant].client.enqueue_and_wait
            for i in range(max(args.latency_warmup, LATENCY_ENTITIES)):
                await call(echo(variant, i), timeout=CALL_TIMEOUT_S)
        pids = {v: self.targets[v].node.pids() for v in order}
        meters = {v: Meter() for v in order}
        for b, block in enumerate(blocks(args.latency_calls, args.blocks)):
            for variant in rotated(order, b):
                call = self.targets[variant].client.enqueue_and_wait
                samples = meters[variant].samples
                before = self.probe.snapshot(pids[variant])
                for seq in block:
                    msg = echo(variant, seq)
                    t0 = time.perf_counter()
                    reply = await call(msg, timeout=CALL_TIMEOUT_S)
                    samples.append(time.perf_counter() - t0)
                    if reply != seq:
                        raise SystemExit(f"bench: Echo {seq} came back as {reply!r}")
                meters[variant].add(before, self.probe.snapshot(pids[variant]))
        return {
            v: {
                "calls": float(len(m.samples)),
                **_percentiles(m.samples),
                "calls_per_s": len(m.samples) / m.elapsed,
                **m.cpu(len(m.samples)),
            }
            for v, m in meters.items()
        }

    async def connect(self, run: int, order: list[str]) -> dict[str, dict[str, float]]:
        """``--connects`` times, round robin over the variants: a new Client and its
        first ``enqueue_and_wait`` on an entity whose worker is up (the close is not
        timed)."""
        tag = f"conn-{run}"
        ids = {v: [f"{tag}-{v}-{i}" for i in range(CONNECT_ENTITIES)] for v in order}
        for variant in order:
            for eid in ids[variant]:
                await self.targets[variant].client.enqueue_and_wait(
                    Echo(id=eid), timeout=CALL_TIMEOUT_S
                )
        samples: dict[str, list[float]] = {v: [] for v in order}
        for i in range(self.args.connects):
            for variant in rotated(order, i):
                target = self.targets[variant]
                msg = Echo(id=ids[variant][i % CONNECT_ENTITIES], seq=i)
                t0 = time.perf_counter()
                async with Client(target.node.address, **target.options) as client:
                    reply = await client.enqueue_and_wait(msg, timeout=CALL_TIMEOUT_S)
                    samples[variant].append(time.perf_counter() - t0)
                if reply != i:
                    raise SystemExit(f"bench: Echo {i} came back as {reply!r}")
        return {v: {"connects": float(len(s)), **_percentiles(s)} for v, s in samples.items()}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


BRIEF = (
    "msgs_per_s",
    "sent_per_s",
    "calls_per_s",
    "p50_ms",
    "p99_ms",
    "supervisor_cpu_ms_per_1k",
    "bench_cpu_ms_per_1k",
    "other_cpu_pct",
)
CPU_KEYS = ("supervisor_cpu_ms_per_1k", "bench_cpu_ms_per_1k")
#: per measurement, the metrics a ratio TLS/plain is taken of
RATIO_KEYS: dict[str, tuple[str, ...]] = {
    "throughput": ("msgs_per_s", "sent_per_s", *CPU_KEYS),
    "sequential": ("calls_per_s", *CPU_KEYS),
    "latency": ("p50_ms", "p90_ms", "p99_ms", "calls_per_s", *CPU_KEYS),
    "connect": ("p50_ms", "p90_ms"),
}


# ---- the report ----------------------------------------------------------------------------

#: rows of the figures table: measurement, metric, label, format
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("throughput", "msgs_per_s", "enqueue_many to completion, msgs/s", "{:,.0f}"),
    ("throughput", "sent_per_s", "enqueue_many, sent (acknowledged) msgs/s", "{:,.0f}"),
    ("throughput", "supervisor_cpu_ms_per_1k", "  supervisor CPU ms / 1k msgs", "{:.1f}"),
    ("throughput", "shards_cpu_ms_per_1k", "  shards CPU ms / 1k msgs", "{:.1f}"),
    ("throughput", "bench_cpu_ms_per_1k", "  client (bench) CPU ms / 1k msgs", "{:.1f}"),
    ("throughput", "other_cpu_pct", "  other load meanwhile, % of one CPU", "{:.0f}"),
    ("sequential", "calls_per_s", "sequential `await enqueue`, calls/s", "{:,.0f}"),
    ("sequential", "supervisor_cpu_ms_per_1k", "  supervisor CPU ms / 1k calls", "{:.0f}"),
    ("sequential", "bench_cpu_ms_per_1k", "  client (bench) CPU ms / 1k calls", "{:.0f}"),
    ("sequential", "other_cpu_pct", "  other load meanwhile, % of one CPU", "{:.0f}"),
    ("latency", "p50_ms", "`enqueue_and_wait` p50, ms", "{:.2f}"),
    ("latency", "p90_ms", "`enqueue_and_wait` p90, ms", "{:.2f}"),
    ("latency", "p99_ms", "`enqueue_and_wait` p99, ms", "{:.2f}"),
    ("latency", "calls_per_s", "`enqueue_and_wait` one caller, calls/s", "{:,.0f}"),
    ("latency", "supervisor_cpu_ms_per_1k", "  supervisor CPU ms / 1k calls", "{:.0f}"),
    ("latency", "bench_cpu_ms_per_1k", "  client (bench) CPU ms / 1k calls", "{:.0f}"),
    ("latency", "other_cpu_pct", "  other load meanwhile, % of one CPU", "{:.0f}"),
    ("connect", "p50_ms", "new Client + first `enqueue_and_wait` p50, ms", "{:.2f}"),
    ("connect", "p90_ms", "new Client + first `enqueue_and_wait` p90, ms", "{:.2f}"),
)


def report(results: dict[str, dict[str, list[dict[str, float]]]], runs: int) -> str:
    def summary(measurement: str, name: str) -> dict[str, dict[str, float]]:
        return summarize(results.get(measurement, {}).get(name, []))

    figures = []
    for measurement, key, label, fmt in ROWS:
        if measurement not in results:
            continue
        row = [label]
        row += [cell(summary(measurement, v), key, fmt) for v in VARIANTS]
        row += [cell(summary(measurement, f"{v}/plain"), key, "{:.3f}") for v in VARIANTS[1:]]
        figures.append(row)
    header = ["", *(LABELS[v] for v in VARIANTS), "TLS / plain", "mutual TLS / plain"]
    out = [
        f"Medians (min-max) of {runs} run(s); ratios taken per run, then their median.",
        "",
        md_table(header, figures),
    ]
    per_run = []
    for measurement, key, label, _ in ROWS:
        main_row = not label.startswith(" ")
        if not main_row or key not in RATIO_KEYS.get(measurement, ()):
            continue
        if measurement not in results:
            continue
        for v in VARIANTS[1:]:
            ratios = [r.get(key) for r in results[measurement].get(f"{v}/plain", [])]
            values = [x for x in ratios if x is not None]
            row = [label.strip(), LABELS[v]]
            row += [f"{x:.3f}" if x is not None else "-" for x in ratios]
            row.append(f"{statistics.median(values):.3f}" if values else "-")
            per_run.append(row)
    header = ["", "", *(f"run {i + 1}" for i in range(runs)), "median"]
    out += ["", "Ratios X / plain per run:", "", md_table(header, per_run)]
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace, nodes: dict[str, NodeProc], pki: Pki, server: RedisProc
) -> dict[str, Any]:
    options = {v: client_options(v, pki) for v in VARIANTS}
    for variant in VARIANTS:
        status = await wait_ready(nodes[variant], options[variant])
        print(
            f"bench: node {status.server_id} ({variant}) ready at {nodes[variant].address}: "
            f"{len(status.shards)} shards, supervisor pid {status.pid}",
            flush=True,
        )
    probe = Probe(server)
    async with contextlib.AsyncExitStack() as stack:
        targets = {}
        for variant in VARIANTS:
            client = await stack.enter_async_context(
                Client(nodes[variant].address, **options[variant])
            )
            targets[variant] = Target(variant, nodes[variant], options[variant], client)
        bench = Bench(args, targets, probe)
        try:
            await bench.run()
            for target in targets.values():
                status = await target.client.status(timeout=5.0)
                restarts = sum(s.restarts for s in status.shards)
                if restarts:
                    print(f"bench: warning: {target.variant}: shards restarted {restarts} times")
        finally:
            probe.close()
    return bench.results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/tls-bench",
        description="The cost of TLS: throughput, sequential enqueue, enqueue_and_wait "
        "latency and a new connection's first call on a plaintext, a TLS and a mutual-TLS "
        "node side by side; starts its own redis-server and nodes on 127.0.0.1. Prints "
        "Markdown tables.",
    )
    p.add_argument("--quick", action="store_true", help="1 run, smaller sizes: well under a minute")
    p.add_argument("--runs", type=int, help="runs (3; --quick 1)")
    p.add_argument(
        "--measurement",
        dest="measurements",
        action="append",
        choices=MEASUREMENTS,
        help="run only this (repeatable); default: all",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON here")
    p.add_argument("--shards", type=int, default=2, help="shards of every node (2)")
    p.add_argument("--entities", type=int, help="throughput: entities (1000; --quick 300)")
    p.add_argument("--messages", type=int, help="throughput: messages per entity (20; 10)")
    p.add_argument(
        "--rounds", type=int, help="throughput: workloads per variant per run (3; --quick 1)"
    )
    p.add_argument("--chunk", type=int, default=1000, help="messages per enqueue_many (1000)")
    p.add_argument("--sequential-calls", type=int, help="sequential: calls (3000; 500)")
    p.add_argument("--latency-calls", type=int, help="latency: timed calls (1000; 300)")
    p.add_argument("--latency-warmup", type=int, help="latency: warm-up calls (200; 100)")
    p.add_argument("--connects", type=int, help="connect: new Clients per run (50; 10)")
    p.add_argument(
        "--blocks",
        type=int,
        default=10,
        help="sequential and latency: blocks per variant, interleaved across variants (10)",
    )
    p.add_argument(
        "--idle-timeout-ms",
        type=int,
        default=2000,
        help="worker_idle_timeout_ms (2000: the warm entities stay warm while the other "
        "nodes take their turn)",
    )
    p.add_argument("--heartbeat-ms", type=int, default=200, help="shard_heartbeat_ms (200)")
    p.add_argument("--aof", choices=("yes", "no"), default="yes", help="Redis appendonly (yes)")
    p.add_argument("--workdir", type=Path, help="keep the nodes', Redis' and certificates' files")
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "normal"
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.measurements:
        args.measurements = list(MEASUREMENTS)
    args.aof = args.aof == "yes"
    sizes = (args.runs, args.entities, args.messages, args.chunk, args.sequential_calls)
    if min(*sizes, args.latency_calls, args.connects, args.rounds, args.blocks) < 1:
        p.error("--runs and every size must be at least 1")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    nodes: dict[str, NodeProc] = {}
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aqtls-")))
        try:
            pki = make_pki(workdir / "certs")
            server = stack.enter_context(redis_server(workdir / "redis", args.aof))
            for variant, spec in specs(args, pki).items():
                nodes[variant] = stack.enter_context(aqnode_serve(workdir, server.url, spec))
            info = machine(server)
            info["client_transport"] = grpc_only().get("transport", "grpc (the only one)")
            print(
                f"bench: tls-bench {args.mode}, {args.runs} run(s): "
                f"{', '.join(args.measurements)}; {info['cpu_model']}, {info['nproc']} CPUs, "
                f"Python {info['python']}, grpcio {info['packages']['grpcio']}, "
                f"redis-server {info['redis_server']}",
                flush=True,
            )
            started = time.monotonic()
            results = asyncio.run(run_all(args, nodes, pki, server))
            took = time.monotonic() - started
        except KeyboardInterrupt:
            print("\nbench: interrupted; stopping the nodes and Redis", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return 130
        except BaseException:
            for variant, node in nodes.items():
                print(f"bench: {variant} node log tail:\n{tail(node.log_path)}", file=sys.stderr)
            raise
    command = "scripts/tls-bench" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    print()
    print(
        f"`{command}`; {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
        f"grpcio {info['packages']['grpcio']}"
    )
    print()
    print(report(results, args.runs))
    print(f"\nbench: {took:.0f}s of measurements")
    if args.json is not None:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        summaries = {
            m: {name: summarize(runs) for name, runs in by_name.items()}
            for m, by_name in results.items()
        }
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": info,
                    "options": options,
                    "results": results,
                    "summary": summaries,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"bench: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
