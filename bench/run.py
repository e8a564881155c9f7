"""The benchmark runner: ``scripts/bench [--scenario NAME] [--runs N] [--json FILE]``.

It starts its own ``redis-server`` (a free TCP port on 127.0.0.1, a temporary directory,
``appendonly yes`` with ``appendfsync everysec`` like the node's managed Redis; ``--aof
no`` turns it off) and its own ``aqnode serve`` (``handlers = ["bench.handlers"]``, its own
process group, ``[redis] url`` pointing at that server). Both are always cleaned up, also
on Ctrl-C and SIGTERM, and get PR_SET_PDEATHSIG so that they die with this process.

Scenarios (each run ``--runs`` times; the table shows the median and the min-max spread):

- ``throughput``: ``--entities`` x ``--messages`` fire-and-forget ``Ping``s (0 ms handler),
  then one ``Marker`` per entity with ``enqueue_and_wait``; FIFO per entity means all of
  that entity's Pings have run when its Marker returns. Timed from the first send to the
  last Marker reply. Three senders: ``enqueue_many`` in chunks, ``asyncio.gather`` of
  single ``enqueue`` calls in waves (pipelined), and one ``await enqueue`` at a time.
  Each run also reports its cost per message: Redis commands (``total_commands_processed``),
  EVALSHA calls, Redis read events (``total_reads_processed``, about one per round trip),
  and CPU seconds per 1,000 messages of the node (supervisor + shards), Redis and this
  benchmark process.
- ``latency``: one caller, sequential ``enqueue_and_wait`` calls after a warm-up:
  ``warm`` cycles over ``--latency-entities`` entities (their workers stay up), ``cold``
  addresses a new entity every call (a worker spawn each time). p50/p99/mean in ms.

The benchmark process runs on the same machine as the node and Redis and competes with
them for CPU; on a small machine the figures are the system's, not the node's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
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
import redis
import uvloop

from aqnode.client import Client
from aqnode.errors import AqError
from bench.handlers import Echo, Marker, Ping

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("throughput", "latency")
THROUGHPUT_VARIANTS = ("enqueue_many", "pipelined", "sequential")
LATENCY_VARIANTS = ("warm", "cold")
READY_TIMEOUT_S = 60.0  #: seconds for redis-server / aqnode serve to come up
SETTLE_TIMEOUT_S = 20.0  #: seconds to wait for the node to be idle between runs
WAIT_TIMEOUT_S = 600.0  #: seconds an enqueue_and_wait may take (a backed-up queue)
STOP_TIMEOUT_S = 15.0  #: seconds a SIGTERMed node gets to drain before SIGKILL


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_us() -> Callable[[], None] | None:
    """A preexec_fn: the child gets SIGTERM when this process dies (Linux PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _quote(value: str) -> str:
    """A TOML / redis.conf string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class RedisProc:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10.0)


@contextlib.contextmanager
def redis_server(directory: Path, aof: bool) -> Iterator[RedisProc]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench: redis-server is not on PATH (scripts/setup installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "redis.log"
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "daemonize no",
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {_quote(str(directory))}",
                f"logfile {_quote(str(log_path))}",
                'save ""',
                f"appendonly {'yes' if aof else 'no'}",
                "appendfsync everysec",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [exe, str(conf)],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us, not it: we stop it after the node
        preexec_fn=_die_with_us(),
    )
    server = RedisProc(proc, port, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"bench: redis-server exited at start:\n{_tail(log_path)}")
            try:
                with server.client() as client:
                    if client.info("server").get("process_id") == proc.pid:
                        break
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: redis-server did not answer:\n{_tail(log_path)}")
            time.sleep(0.02)
        yield server
    finally:
        _stop_group(proc, 5.0)


@dataclass
class NodeProc:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def pids(self) -> list[int]:
        """The supervisor and every process under it (the shards)."""
        try:
            sup = psutil.Process(self.proc.pid)
            return [sup.pid, *(c.pid for c in sup.children(recursive=True))]
        except psutil.Error:
            return []


def node_config(directory: Path, redis_url: str, port: int, args: argparse.Namespace) -> str:
    return (
        "\n".join(
            [
                'handlers = ["bench.handlers"]',
                f"shards = {args.shards}",
                f'listen = "127.0.0.1:{port}"',
                'server_id = "bench-node"',
                f"data_dir = {_quote(str(directory / 'data'))}",
                "max_total_workers = 0",  # unbounded: the benchmark must not be refused
                "max_total_queue_depth = 0",
                f"shard_heartbeat_ms = {args.heartbeat_ms}",
                "[redis]",
                f"url = {_quote(redis_url)}",
                "[entities.bench]",
                f"worker_idle_timeout_ms = {args.idle_timeout_ms}",
            ]
        )
        + "\n"
    )


@contextlib.contextmanager
def aqnode_serve(directory: Path, redis_url: str, args: argparse.Namespace) -> Iterator[NodeProc]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = directory / "node.toml"
    config_path.write_text(node_config(directory, redis_url, port, args))
    log_path = directory / "node.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aqnode", "serve", "--config", str(config_path)],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the cleanup reaches every shard
            preexec_fn=_die_with_us(),
        )
    node = NodeProc(proc, f"127.0.0.1:{port}", log_path)
    try:
        yield node
    finally:
        _stop_group(proc, STOP_TIMEOUT_S)


async def wait_ready(node: NodeProc) -> Any:
    """Poll ``Client.status()`` until it answers and every shard is alive.

    A fresh Client per attempt, so that the benchmark's own Client never saw a failed
    stream (at commit de78e83 such a Client kept a stale writer task that failed its
    next sends; fixed since, the precaution stays cheap).
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if node.proc.poll() is not None:
            raise SystemExit(
                f"bench: aqnode serve exited with {node.proc.returncode}:\n{_tail(node.log_path)}"
            )
        try:
            async with Client(node.address) as client:
                status = await client.status(timeout=2.0)
            if status.shards and all(s.alive for s in status.shards):
                return status
        except AqError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the node did not get ready:\n{_tail(node.log_path)}")
        await asyncio.sleep(0.1)


async def settle(client: Client) -> None:
    """Wait until the node has no live message and no entity worker left (idle teardown)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = await client.status(timeout=5.0)
        if status.live_messages == 0 and all(s.workers == 0 for s in status.shards):
            return
        await asyncio.sleep(0.1)
    print("bench: warning: the node did not go idle between runs", file=sys.stderr)


# ---- measurement ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters read before and after a measured run."""

    at: float
    commands: int
    evalsha: int
    reads: int
    supervisor_cpu: float
    shards_cpu: float
    redis_cpu: float
    client_cpu: float
    calls: dict[str, int]  # per Redis command: calls, also those made inside Lua scripts
    system_busy: float  # CPU seconds the whole machine was busy (all processes, all CPUs)


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _system_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0))


class Probe:
    """Reads Redis and process counters; ``delta`` turns two snapshots into per-message costs."""

    #: commands (and read events) of one snapshot's own, subtracted from every delta
    OWN_COMMANDS = 2

    def __init__(self, node: NodeProc, server: RedisProc) -> None:
        self.node = node
        self.server = server
        self.redis = server.client()

    def snapshot(self) -> Snapshot:
        pids = self.node.pids()
        stats = self.redis.info("stats")
        cmdstats = self.redis.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(value.get("calls", 0))
            for name, value in cmdstats.items()
            if isinstance(value, dict)
        }
        return Snapshot(
            at=time.perf_counter(),
            commands=int(stats["total_commands_processed"]),
            evalsha=calls.get("evalsha", 0),
            reads=int(stats.get("total_reads_processed", 0)),
            supervisor_cpu=_cpu(pids[0]) if pids else 0.0,
            shards_cpu=sum(_cpu(p) for p in pids[1:]),
            redis_cpu=_cpu(self.server.proc.pid),
            client_cpu=_cpu(os.getpid()),
            calls=calls,
            system_busy=_system_busy(),
        )

    def costs(self, before: Snapshot, after: Snapshot, messages: int) -> dict[str, float]:
        per_k = 1000.0 / messages
        own = self.OWN_COMMANDS
        node_cpu = (after.supervisor_cpu - before.supervisor_cpu) + (
            after.shards_cpu - before.shards_cpu
        )
        ours = node_cpu + sum(
            getattr(after, f) - getattr(before, f) for f in ("redis_cpu", "client_cpu")
        )
        elapsed = after.at - before.at
        return {
            # CPU the rest of the machine used meanwhile, in % of one CPU: other load skews
            # the figures (the machine is shared).
            "other_cpu_pct": 100.0 * (after.system_busy - before.system_busy - ours) / elapsed,
            "redis_cmds_per_msg": (after.commands - before.commands - own) / messages,
            "evalsha_per_msg": (after.evalsha - before.evalsha) / messages,
            "redis_reads_per_msg": (after.reads - before.reads - own) / messages,
            "node_cpu_s_per_1k": node_cpu * per_k,
            "supervisor_cpu_s_per_1k": (after.supervisor_cpu - before.supervisor_cpu) * per_k,
            "shards_cpu_s_per_1k": (after.shards_cpu - before.shards_cpu) * per_k,
            "redis_cpu_s_per_1k": (after.redis_cpu - before.redis_cpu) * per_k,
            "bench_cpu_s_per_1k": (after.client_cpu - before.client_cpu) * per_k,
            # Every command's calls per message, for the JSON (INFO is the probe's own).
            **{
                f"cmd.{name}_per_msg": (n - before.calls.get(name, 0)) / messages
                for name, n in sorted(after.calls.items())
                if name != "info" and n != before.calls.get(name, 0)
            },
        }

    def close(self) -> None:
        self.redis.close()


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    keys = dict.fromkeys(k for r in runs for k in r)
    for key in keys:
        values = [r.get(key, 0.0) for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


# ---- scenarios -----------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    node: NodeProc
    probe: Probe
    client: Client
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def repeat(
        self, scenario: str, variant: str, run: Callable[[int], Awaitable[dict[str, float]]]
    ) -> None:
        runs: list[dict[str, float]] = []
        for i in range(self.args.runs):
            await settle(self.client)
            metrics = await run(i)
            runs.append(metrics)
            print(f"  {scenario}/{variant} run {i + 1}/{self.args.runs}: {_brief(metrics)}")
        self.results.setdefault(scenario, {})[variant] = {"runs": runs, "summary": summarize(runs)}

    # -- throughput --

    async def throughput(self) -> None:
        senders: dict[str, Callable[[list[Ping]], Awaitable[None]]] = {
            "enqueue_many": self._send_many,
            "pipelined": self._send_pipelined,
            "sequential": self._send_sequential,
        }
        for variant in self.args.variants or THROUGHPUT_VARIANTS:
            if variant not in senders:
                continue
            count = self.args.messages
            if variant == "sequential" and self.args.sequential_messages:
                count = self.args.sequential_messages

            async def run(i: int, variant: str = variant, count: int = count) -> dict[str, float]:
                return await self._throughput_run(f"{variant}-{i}", count, senders[variant])

            await self.repeat("throughput", variant, run)

    async def _throughput_run(
        self, tag: str, per_entity: int, send: Callable[[list[Ping]], Awaitable[None]]
    ) -> dict[str, float]:
        ids = [f"{tag}-{e}" for e in range(self.args.entities)]
        # Round robin: message k of every entity before message k+1 of any, so that every
        # entity has work from the start (many entities in parallel, FIFO within each).
        pings = [Ping(id=eid, seq=k) for k in range(per_entity) for eid in ids]
        messages = len(pings) + len(ids)  # the markers are messages too
        before = self.probe.snapshot()
        await send(pings)
        acked = time.perf_counter()
        seen = await asyncio.gather(
            *(self.client.enqueue_and_wait(Marker(id=eid), timeout=WAIT_TIMEOUT_S) for eid in ids)
        )
        after = self.probe.snapshot()
        missing = sum(per_entity - n for n in seen)
        if missing:
            raise SystemExit(f"bench: {missing} Pings had not run when their entity's Marker did")
        elapsed = after.at - before.at
        return {
            "messages": float(messages),
            "elapsed_s": elapsed,
            "msgs_per_s": messages / elapsed,
            "enqueue_acked_s": acked - before.at,
            "enqueue_acked_per_s": len(pings) / (acked - before.at),
            **self.probe.costs(before, after, messages),
        }

    async def _send_many(self, pings: list[Ping]) -> None:
        chunk = self.args.chunk
        for start in range(0, len(pings), chunk):
            await self.client.enqueue_many(pings[start : start + chunk])

    async def _send_pipelined(self, pings: list[Ping]) -> None:
        window = self.args.window
        enqueue = self.client.enqueue
        for start in range(0, len(pings), window):
            await asyncio.gather(*(enqueue(p) for p in pings[start : start + window]))

    async def _send_sequential(self, pings: list[Ping]) -> None:
        enqueue = self.client.enqueue
        for p in pings:
            await enqueue(p)

    # -- latency --

    async def latency(self) -> None:
        for variant in self.args.variants or LATENCY_VARIANTS:
            if variant not in LATENCY_VARIANTS:
                continue

            async def run(i: int, variant: str = variant) -> dict[str, float]:
                return await self._latency_run(variant, i)

            await self.repeat("latency", variant, run)

    async def _latency_run(self, variant: str, run: int) -> dict[str, float]:
        n, spread = self.args.latency_calls, self.args.latency_entities
        if variant == "warm":
            ids = [f"lat-{run}-{i % spread}" for i in range(n)]
        else:
            ids = [f"cold-{run}-{i}" for i in range(n)]
        call = self.client.enqueue_and_wait
        for i in range(self.args.latency_warmup):  # warm the path (and the warm entities)
            await call(Echo(id=ids[i % len(ids)] if variant == "warm" else f"wu-{run}-{i}"))
        samples: list[float] = []
        before = self.probe.snapshot()
        for seq, eid in enumerate(ids):
            t0 = time.perf_counter()
            reply = await call(Echo(id=eid, seq=seq), timeout=30.0)
            samples.append(time.perf_counter() - t0)
            if reply != seq:
                raise SystemExit(f"bench: Echo {seq} came back as {reply!r}")
        after = self.probe.snapshot()
        samples.sort()
        ms = [s * 1000 for s in samples]
        return {
            "calls": float(n),
            "p50_ms": _percentile(ms, 50),
            "p90_ms": _percentile(ms, 90),
            "p99_ms": _percentile(ms, 99),
            "max_ms": ms[-1],
            "mean_ms": statistics.fmean(ms),
            "calls_per_s": n / (after.at - before.at),
            **self.probe.costs(before, after, n),
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def _brief(metrics: dict[str, float]) -> str:
    keys = ("msgs_per_s", "elapsed_s", "p50_ms", "p99_ms", "node_cpu_s_per_1k")
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


# ---- report --------------------------------------------------------------------------------

THROUGHPUT_COLUMNS = (
    ("msgs/s", "msgs_per_s", "{:,.0f}"),
    ("acked/s", "enqueue_acked_per_s", "{:,.0f}"),
    ("s", "elapsed_s", "{:.2f}"),
)
COST_COLUMNS = (
    ("redis cmds/msg", "redis_cmds_per_msg", "{:.3f}"),
    ("evalsha/msg", "evalsha_per_msg", "{:.4f}"),
    ("redis reads/msg", "redis_reads_per_msg", "{:.4f}"),
    ("node cpu s/1k", "node_cpu_s_per_1k", "{:.3f}"),
    ("superv.", "supervisor_cpu_s_per_1k", "{:.3f}"),
    ("shards", "shards_cpu_s_per_1k", "{:.3f}"),
    ("redis cpu s/1k", "redis_cpu_s_per_1k", "{:.3f}"),
    ("bench cpu s/1k", "bench_cpu_s_per_1k", "{:.3f}"),
    ("other cpu %", "other_cpu_pct", "{:.0f}"),
)
LATENCY_COLUMNS = (
    ("p50 ms", "p50_ms", "{:.3f}"),
    ("p90 ms", "p90_ms", "{:.3f}"),
    ("p99 ms", "p99_ms", "{:.3f}"),
    ("mean ms", "mean_ms", "{:.3f}"),
    ("max ms", "max_ms", "{:.2f}"),
    ("calls/s", "calls_per_s", "{:,.0f}"),
)


def _cell(summary: dict[str, dict[str, float]], key: str, fmt: str) -> str:
    s = summary[key]
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def table(
    title: str, rows: dict[str, Any], columns: tuple[tuple[str, str, str], ...], runs: int
) -> str:
    header = ["variant", *(c[0] for c in columns)]
    body = [[name, *(_cell(r["summary"], c[1], c[2]) for c in columns)] for name, r in rows.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [f"{title}: median (min-max) of {runs} runs"]
    for row in [header, ["-" * w for w in widths], *body]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    parts = []
    if "throughput" in results:
        rows = results["throughput"]
        workload = f"{args.entities:,} entities x {args.messages} Pings + 1 Marker each" + (
            f" (sequential: x {args.sequential_messages})" if args.sequential_messages else ""
        )
        parts.append(table(f"throughput, {workload}", rows, THROUGHPUT_COLUMNS, args.runs))
        parts.append(table("cost per message (throughput runs)", rows, COST_COLUMNS, args.runs))
    if "latency" in results:
        parts.append(
            table(
                f"latency, enqueue_and_wait, one caller, {args.latency_calls:,} calls "
                f"(warm: {args.latency_entities} entities; cold: a new entity per call)",
                results["latency"],
                LATENCY_COLUMNS,
                args.runs,
            )
        )
        parts.append(
            table("cost per call (latency runs)", results["latency"], COST_COLUMNS, args.runs)
        )
    return "\n\n".join(parts)


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


async def run_all(args: argparse.Namespace, node: NodeProc, server: RedisProc) -> dict[str, Any]:
    status = await wait_ready(node)
    async with Client(node.address) as client:
        print(
            f"bench: node {status.server_id} ready at {node.address}: "
            f"{len(status.shards)} shards (pids {', '.join(str(s.pid) for s in status.shards)}), "
            f"supervisor pid {status.pid}, redis {server.url} "
            f"(appendonly {'yes' if args.aof else 'no'})"
        )
        probe = Probe(node, server)
        bench = Bench(args, node, probe, client)
        try:
            for scenario in args.scenario or SCENARIOS:
                print(f"bench: {scenario}")
                await getattr(bench, scenario)()
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
        description="Benchmark aqnode: starts its own redis-server and aqnode serve.",
    )
    p.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this (repeatable)"
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        choices=THROUGHPUT_VARIANTS + LATENCY_VARIANTS,
        help="run only this variant of the chosen scenarios (repeatable)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per scenario variant (default 3)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON here")
    p.add_argument("--shards", type=int, default=2, help="node shards (default 2)")
    p.add_argument("--aof", choices=("yes", "no"), default="yes", help="Redis appendonly")
    p.add_argument("--entities", type=int, default=1000, help="throughput: entities (1000)")
    p.add_argument("--messages", type=int, default=20, help="throughput: Pings per entity (20)")
    p.add_argument(
        "--sequential-messages",
        type=int,
        default=0,
        metavar="N",
        help="throughput/sequential: Pings per entity (default 0: as --messages)",
    )
    p.add_argument("--chunk", type=int, default=1000, help="enqueue_many chunk size (1000)")
    p.add_argument(
        "--window", type=int, default=1000, help="pipelined: enqueue calls per gather (1000)"
    )
    p.add_argument("--latency-calls", type=int, default=2000, help="latency: timed calls (2000)")
    p.add_argument("--latency-warmup", type=int, default=200, help="latency: warm-up calls (200)")
    p.add_argument(
        "--latency-entities", type=int, default=100, help="latency/warm: entities cycled (100)"
    )
    p.add_argument(
        "--idle-timeout-ms",
        type=int,
        default=1000,
        help="[entities.bench] worker_idle_timeout_ms (1000: runs start with no workers)",
    )
    p.add_argument("--heartbeat-ms", type=int, default=200, help="shard_heartbeat_ms (200)")
    p.add_argument(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the benchmark client's event loop (default asyncio)",
    )
    p.add_argument("--workdir", type=Path, help="keep the node's and Redis' files here")
    args = p.parse_args(argv)
    args.aof = args.aof == "yes"
    if args.runs < 1 or args.entities < 1 or args.messages < 1:
        p.error("--runs, --entities and --messages must be at least 1")
    return args


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
        try:
            server = stack.enter_context(redis_server(workdir / "redis", args.aof))
            node = stack.enter_context(aqnode_serve(workdir / "node", server.url, args))
            info = machine(server)
            print(
                f"bench: {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
                f"redis-server {info['redis_server']}, aqnode {info['packages']['aqnode']}"
            )
            started = time.monotonic()
            if args.client_loop == "uvloop":
                results = uvloop.run(run_all(args, node, server))
            else:
                results = asyncio.run(run_all(args, node, server))
            took = time.monotonic() - started
        except KeyboardInterrupt:
            print("\nbench: interrupted; stopping the node and Redis", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return 130
        except BaseException:
            with contextlib.suppress(NameError):
                print(f"bench: node log tail:\n{_tail(node.log_path)}", file=sys.stderr)
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
