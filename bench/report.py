"""The report: Markdown tables (they read fine in a terminal too) and the targets of issue 4.

Every cell is ``median (min-max)`` over the runs; ratios are computed per run, between
two measurements taken one right after the other, and then summarized the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Summary = dict[str, dict[str, float]]


def cell(summary: Summary, key: str, fmt: str | Callable[[float], str]) -> str:
    s = summary.get(key)
    if s is None:
        return "-"
    f = fmt.format if isinstance(fmt, str) else fmt
    med, lo, hi = (f(s[k]) for k in ("median", "min", "max"))
    if s.get("n", 2) < 2 or lo == hi:
        return med
    return f"{med} ({lo}-{hi})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


THROUGHPUT_COLUMNS = (
    ("msgs/s to completion", "msgs_per_s", "{:,.0f}"),
    ("seconds", "elapsed_s", "{:.2f}"),
    ("sent/s (acked)", "acked_per_s", "{:,.0f}"),
    ("out of order", "out_of_order", "{:.0f}"),
    ("entities out of order", "entities_out_of_order", "{:.0f}"),
)
COST_COLUMNS = (
    ("redis cmds/msg", "redis_cmds_per_msg", "{:.2f}"),
    ("EVALSHA+EVAL/msg", "scripts_per_msg", "{:.4f}"),
    ("redis reads/msg (~round trips)", "redis_reads_per_msg", "{:.4f}"),
    ("system CPU s/1k msgs", "system_cpu_s_per_1k", "{:.3f}"),
    ("of which supervisor", "first_cpu_s_per_1k", "{:.3f}"),
    ("of which shards/workers", "rest_cpu_s_per_1k", "{:.3f}"),
    ("redis CPU s/1k", "redis_cpu_s_per_1k", "{:.3f}"),
    ("bench CPU s/1k", "bench_cpu_s_per_1k", "{:.3f}"),
    ("other CPU %", "other_cpu_pct", "{:.0f}"),
)
#: latency's one-call-at-a-time variants (issue 11): durable acknowledgements, calls/s
AWAIT_ENQUEUE = "one at a time: await Client.enqueue"
SYNC_ENQUEUE = "one at a time: SyncClient.enqueue"
ONE_AT_A_TIME = (AWAIT_ENQUEUE, SYNC_ENQUEUE)

LATENCY_COLUMNS = (
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("calls/s", "calls_per_s", "{:,.0f}"),
    ("node CPU ms/call", "system_cpu_s_per_1k", "{:.2f}"),
    ("EVALSHA/call", "scripts_per_msg", "{:.2f}"),
    ("other CPU %", "other_cpu_pct", "{:.0f}"),
)


def _rows(results: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    return [
        [name, *(cell(r["summary"], key, fmt) for _, key, fmt in columns)]
        for name, r in results.items()
    ]


def throughput_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cells = results.get("throughput", {})
    if not cells:
        return []
    out = [
        f"### Throughput to completion ({args.entities:,} entities x {args.messages} messages; "
        f"`sequential` and `baseline lpush`: x {args.sequential_messages}), "
        f"median (min-max) of {args.runs} runs",
        md_table(
            ["workload / sender", *(c[0] for c in THROUGHPUT_COLUMNS)],
            _rows(cells, THROUGHPUT_COLUMNS),
        ),
    ]
    ratios = results.get("ratios", {})
    if ratios:
        out += [
            "### aqnode / baseline (per run, the two measured back to back)",
            md_table(
                ["workload / aqnode sender", "vs baseline", "ratio"],
                [
                    [name, r["vs"], cell(r["summary"], "ratio", "{:.1f}x")]
                    for name, r in ratios.items()
                ],
            ),
        ]
    out += [
        "### Cost per message (same runs; aqnode: node = supervisor + shards, per message "
        "processed incl. Markers; baseline: its worker processes)",
        md_table(["workload / sender", *(c[0] for c in COST_COLUMNS)], _rows(cells, COST_COLUMNS)),
    ]
    return out


REALIO_COLUMNS = (
    ("msgs/s to completion", "msgs_per_s", "{:,.0f}"),
    ("seconds", "elapsed_s", "{:.2f}"),
    ("sent/s (acked)", "acked_per_s", "{:,.0f}"),
    ("out of order", "out_of_order", "{:.0f}"),
    ("missing", "missing", "{:.0f}"),
    ("entities written wrong", "written_bad", "{:.0f}"),
    ("node/workers CPU s/1k", "system_cpu_s_per_1k", "{:.3f}"),
    ("redis CPU s/1k", "redis_cpu_s_per_1k", "{:.3f}"),
    ("bench CPU s/1k", "bench_cpu_s_per_1k", "{:.3f}"),
    ("redis cmds/msg", "redis_cmds_per_msg", "{:.2f}"),
    ("redis reads/msg", "redis_reads_per_msg", "{:.3f}"),
    ("handler connections", "handler_connections", "{:.0f}"),
    ("other CPU %", "other_cpu_pct", "{:.0f}"),
)


def realio_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cells = results.get("realio", {})
    if not cells:
        return []
    rows = _rows(cells, REALIO_COLUMNS)
    out = [
        f"### Real I/O handlers (two awaited redis.asyncio pipelines per message; handler pool "
        f"{args.realio_pool or 'unbounded'} per process): {args.entities:,} entities x "
        f"{args.messages} round robin (`sync enqueue`, `sequential`: x "
        f"{args.sequential_messages}), median (min-max) of {args.runs} runs; costs per "
        "workload message (the Markers' included)",
        md_table(["sender", *(c[0] for c in REALIO_COLUMNS)], rows),
    ]
    ratios = results.get("realio_ratios", {})
    if ratios:
        out += [
            "### Real I/O: aqnode / lists baseline (per run, measured back to back)",
            md_table(
                ["aqnode sender", "vs", "ratio"],
                [
                    [name, r["vs"], cell(r["summary"], "ratio", "{:.2f}x")]
                    for name, r in ratios.items()
                ],
            ),
        ]
    pools = results.get("realio_pools", {})
    if pools:
        out += [
            "### Real I/O: the handler's connection pool per shard process "
            f"(aqnode `enqueue_many`, median (min-max) of {args.runs} runs)",
            md_table(
                ["pool", *(c[0] for c in REALIO_COLUMNS[:3]), *(c[0] for c in REALIO_COLUMNS[6:])],
                _rows(pools, (*REALIO_COLUMNS[:3], *REALIO_COLUMNS[6:])),
            ),
        ]
    return out


def latency_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cells = results.get("latency", {})
    if not cells:
        return []
    return [
        f"### Latency: `enqueue_and_wait`, and durable `enqueue` one call at a time; "
        f"median (min-max) of {args.runs} runs",
        md_table(["variant", *(c[0] for c in LATENCY_COLUMNS)], _rows(cells, LATENCY_COLUMNS)),
    ]


def shards_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cells = results.get("shards", {})
    if not cells:
        return []
    rows = _rows(
        {k: v for k, v in cells.items() if k != "ratio"},
        (
            ("msgs/s", "msgs_per_s", "{:,.0f}"),
            ("seconds", "elapsed_s", "{:.2f}"),
            ("shards CPU s/1k", "rest_cpu_s_per_1k", "{:.3f}"),
            ("other CPU %", "other_cpu_pct", "{:.0f}"),
        ),
    )
    ratio = cells.get("ratio")
    if ratio:
        label = f"ratio {args.shards}/1"
        rows.append([label, cell(ratio["summary"], "ratio", "{:.2f}x"), "", "", ""])
    return [
        f"### CPU-bound handler (~{args.cpu_ms} ms pure-Python loop), "
        f"{args.entities:,} entities x {args.cpu_messages}, enqueue_many, "
        f"median (min-max) of {args.runs} runs",
        md_table(["node", "msgs/s", "seconds", "shards CPU s/1k", "other CPU %"], rows),
    ]


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def memory_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    idle = results.get("memory", {}).get("idle")
    if idle:
        s = idle["summary"]
        rows = [
            ["entities with an idle worker", cell(s, "workers", "{:,.0f}")],
            ["shards' RSS delta per entity", cell(s, "shard_bytes_per_entity", "{:,.0f} B")],
            [
                "supervisor's RSS delta per entity",
                cell(s, "supervisor_bytes_per_entity", "{:,.0f} B"),
            ],
            ["node's RSS delta per entity", cell(s, "node_bytes_per_entity", "{:,.0f} B")],
            [
                "Redis used_memory delta per message (log entries kept)",
                cell(s, "redis_bytes_per_entity", "{:,.0f} B"),
            ],
            ["node RSS before", cell(s, "node_rss_before", _mib)],
            ["node RSS after", cell(s, "node_rss_after", _mib)],
            ["send + process rate", cell(s, "msgs_per_s", "{:,.0f} msgs/s")],
        ]
        out += [
            f"### Memory: one message each to {args.memory_entities:,} distinct entities, "
            f"idle workers kept (median (min-max) of {idle['summary']['workers']['n']:.0f} runs)",
            md_table(["", "value"], rows),
        ]
    million = results.get("million", {}).get("million")
    if million:
        s = million["summary"]
        rows = [
            ["node RSS at start", cell(s, "rss_start", _mib)],
            ["node RSS peak (sampled every 0.25 s)", cell(s, "rss_peak", _mib)],
            ["of which the largest process at its peak", cell(s, "rss_peak_process", _mib)],
            ["node RSS once every worker is torn down", cell(s, "rss_final", _mib)],
            ["workers at the end", cell(s, "workers_final", "{:,.0f}")],
            ["send + process rate", cell(s, "msgs_per_s", "{:,.0f} msgs/s")],
            [
                "seconds from the last message handled to no worker left",
                cell(s, "teardown_s", "{:.1f}"),
            ],
            ["Redis used_memory after (log entries kept)", cell(s, "redis_used_after", _mib)],
        ]
        out += [
            f"### Memory: {args.million_entities:,} distinct entities, one message each, "
            f"`worker_idle_timeout_ms = {args.million_idle_ms}`",
            md_table(["", "value"], rows),
        ]
    return out


# ---- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    path: tuple[str, ...]  #: where the figure is in the results: scenario, cell, metric
    ok: Callable[[float], bool]
    fmt: str


def _median(results: dict[str, Any], *path: str) -> float | None:
    node: Any = results
    for key in path[:-1]:
        node = node.get(key)
        if node is None:
            return None
    s = node.get("summary", {}).get(path[-1])
    return None if s is None else float(s["median"])


def _at_least(name: str, path: tuple[str, ...], floor: float, fmt: str) -> Target:
    return Target(name, path, lambda v: v >= floor, fmt)


def _at_most(name: str, path: tuple[str, ...], ceiling: float, fmt: str) -> Target:
    return Target(name, path, lambda v: v <= ceiling, fmt)


def targets(args: argparse.Namespace) -> list[Target]:
    """Issue 4's and issue 11's targets, where the results are."""
    u0 = "uniform/0ms"
    many, warm = f"{u0}/enqueue_many", "1 caller, warm"
    rate, ratio, ratio2, ms, sec = "{:,.0f} msgs/s", "{:.1f}x", "{:.2f}x", "{:.2f} ms", "{:.3f} s"
    million = f"{args.million_entities:,} entities: node RSS"
    t = [
        _at_least(
            f"{u0} enqueue_many >= 20,000 msgs/s to completion",
            ("throughput", many, "msgs_per_s"),
            20_000,
            rate,
        ),
        _at_least(
            f"{u0} pipelined enqueue >= 20,000 msgs/s to completion",
            ("throughput", f"{u0}/pipelined", "msgs_per_s"),
            20_000,
            rate,
        ),
        _at_least(
            f"{u0} enqueue_many >= 10x the baseline (same run)",
            ("ratios", many, "ratio"),
            10,
            ratio,
        ),
        _at_least(
            f"{u0} pipelined enqueue >= 10x the baseline (same run)",
            ("ratios", f"{u0}/pipelined", "ratio"),
            10,
            ratio,
        ),
        _at_least(
            f"{u0} sequential enqueue >= the baseline's rate (same run)",
            ("ratios", f"{u0}/sequential", "ratio"),
            1,
            ratio2,
        ),
    ]
    for sender in ("enqueue_many", "pipelined"):
        t += [
            _at_most(
                f"{u0} {sender}: <= 0.1 Redis round trips per message (read events)",
                ("throughput", f"{u0}/{sender}", "redis_reads_per_msg"),
                0.1,
                "{:.4f}",
            ),
            _at_most(
                f"{u0} {sender}: node CPU <= 60 ms per 1,000 messages",
                ("throughput", f"{u0}/{sender}", "system_cpu_s_per_1k"),
                0.060,
                sec,
            ),
        ]
    t += [
        _at_least(
            "realio: enqueue_many >= 1.0x the lists baseline (same run)",
            ("realio_ratios", "enqueue_many", "ratio"),
            1.0,
            ratio2,
        ),
        _at_least(
            "realio: one awaited SyncClient.enqueue per message >= 0.5x the lists baseline",
            ("realio_ratios", "sync enqueue", "ratio"),
            0.5,
            ratio2,
        ),
        _at_least(
            "realio: one awaited Client.enqueue per message >= 0.5x the lists baseline",
            ("realio_ratios", "sequential", "ratio"),
            0.5,
            ratio2,
        ),
        _at_most(
            "enqueue_and_wait, one caller (warm): p50 <= 1 ms", ("latency", warm, "p50_ms"), 1.0, ms
        ),
        _at_most(
            "enqueue_and_wait, one caller (warm): p99 <= 5 ms", ("latency", warm, "p99_ms"), 5.0, ms
        ),
        *(
            _at_least(
                f"{name} (no-op handler, WAL on) >= 3,500 calls/s",
                ("latency", name, "calls_per_s"),
                3500,
                "{:,.0f} calls/s",
            )
            for name in ONE_AT_A_TIME
        ),
        _at_most(
            "enqueue_and_wait, one caller (warm): p50 <= 0.6 ms (issue 11)",
            ("latency", warm, "p50_ms"),
            0.6,
            ms,
        ),
        _at_most(
            "enqueue_and_wait, one caller (warm): p99 <= 1.5 ms (issue 11)",
            ("latency", warm, "p99_ms"),
            1.5,
            ms,
        ),
        _at_most(
            f"{u0} enqueue_many: node CPU <= 25 ms per 1,000 messages (issue 11)",
            ("throughput", many, "system_cpu_s_per_1k"),
            0.025,
            sec,
        ),
        _at_most(
            f"{u0} enqueue_many: Redis CPU <= 15 ms per 1,000 messages (issue 11)",
            ("throughput", many, "redis_cpu_s_per_1k"),
            0.015,
            sec,
        ),
        _at_least(
            "2 shards >= 1.7x 1 shard, CPU-bound handler", ("shards", "ratio", "ratio"), 1.7, ratio2
        ),
        _at_most(
            "idle entity worker <= 1 KB RSS (shards' delta per entity)",
            ("memory", "idle", "shard_bytes_per_entity"),
            1024,
            "{:,.0f} B",
        ),
        _at_most(
            "idle entity <= 1 KB RSS (whole node's delta per entity)",
            ("memory", "idle", "node_bytes_per_entity"),
            1024,
            "{:,.0f} B",
        ),
        _at_most(
            f"{million} < 2 GB once idle workers are torn down",
            ("million", "million", "rss_final"),
            2 * 10**9 - 1,
            "{:,.0f} bytes",
        ),
        _at_most(
            f"{million} peak < 2 GB (not a stated target)",
            ("million", "million", "rss_peak"),
            2 * 10**9 - 1,
            "{:,.0f} bytes",
        ),
    ]
    return t


def targets_section(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows = []
    for target in targets(args):
        value = _median(results, *target.path)
        if value is None:
            continue
        rows.append(
            [target.name, target.fmt.format(value), "met" if target.ok(value) else "NOT met"]
        )
    if not rows:
        return []
    return ["### Targets (issues 4 and 11; medians)", md_table(["target", "measured", ""], rows)]


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [
        *throughput_section(results, args),
        *realio_section(results, args),
        *latency_section(results, args),
        *shards_section(results, args),
        *memory_section(results, args),
        *targets_section(results, args),
    ]
    return "\n\n".join(parts)
