"""Counters read before and after a measured run, turned into costs per message.

- Redis (``INFO stats``, ``INFO commandstats``): ``total_commands_processed`` (Redis counts
  the commands a Lua script calls as well), ``evalsha`` + ``eval`` calls (script calls),
  ``total_reads_processed`` (read events on client sockets: about one per round trip,
  more for a pipeline too big for one read) and every command's calls for the JSON.
- CPU (psutil ``cpu_times``, user + system) of the system under test's processes (the
  node's supervisor and shards, or the baseline's workers), of ``redis-server`` (with its
  AOF-rewrite children once they have exited) and of this benchmark process, and the
  whole machine's busy time (to see other load).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import psutil

from bench.procs import RedisProc


@dataclass
class Snapshot:
    at: float
    commands: int
    scripts: int  # evalsha + eval calls
    reads: int
    cpu: dict[int, float]  # per pid of the system under test
    redis_cpu: float
    client_cpu: float
    calls: dict[str, int]  # per Redis command: calls, also those made inside Lua scripts
    system_busy: float  # CPU seconds the whole machine was busy (all processes, all CPUs)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of ``pid``; with ``children``, also of its children that
    have exited (Redis' AOF rewrite and RDB children)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    total = t.user + t.system
    if children:
        total += t.children_user + t.children_system
    return float(total)


def _system_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0))


class Probe:
    #: commands (and read events) of one snapshot's own, subtracted from every delta
    OWN_COMMANDS = 2

    def __init__(self, server: RedisProc) -> None:
        self.server = server
        self.redis = server.client()

    def snapshot(self, pids: list[int]) -> Snapshot:
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
            scripts=calls.get("evalsha", 0) + calls.get("eval", 0),
            reads=int(stats.get("total_reads_processed", 0)),
            cpu={pid: cpu_seconds(pid) for pid in pids},
            redis_cpu=cpu_seconds(self.server.proc.pid, children=True),
            client_cpu=cpu_seconds(os.getpid()),
            calls=calls,
            system_busy=_system_busy(),
        )

    def redis_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def costs(self, before: Snapshot, after: Snapshot, messages: int) -> dict[str, float]:
        """Costs per message; the first pid of the snapshots is reported apart (the node's
        supervisor), the others summed (its shards)."""
        per_k = 1000.0 / messages
        own = self.OWN_COMMANDS
        pids = [p for p in before.cpu if p in after.cpu]
        each = [after.cpu[p] - before.cpu[p] for p in pids]
        system_cpu = sum(each)
        ours = system_cpu + (after.redis_cpu - before.redis_cpu)
        ours += after.client_cpu - before.client_cpu
        elapsed = after.at - before.at
        return {
            # CPU the rest of the machine used meanwhile, in % of one CPU: other load skews
            # the figures (the machine is shared).
            "other_cpu_pct": max(
                0.0, 100.0 * (after.system_busy - before.system_busy - ours) / elapsed
            ),
            "redis_cmds_per_msg": (after.commands - before.commands - own) / messages,
            "scripts_per_msg": (after.scripts - before.scripts) / messages,
            "redis_reads_per_msg": (after.reads - before.reads - own) / messages,
            "system_cpu_s_per_1k": system_cpu * per_k,
            "first_cpu_s_per_1k": (each[0] if each else 0.0) * per_k,
            "rest_cpu_s_per_1k": sum(each[1:]) * per_k,
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
    """Median, min and max of every metric over the runs."""
    out: dict[str, dict[str, float]] = {}
    keys = dict.fromkeys(k for r in runs for k in r)
    for key in keys:
        values = [r[key] for r in runs if key in r]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return out


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]
