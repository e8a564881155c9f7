"""Cluster-mode benchmarks: ``scripts/cluster-bench [--scenario failover|cost|all] ...``.

Both scenarios start their own ``redis-server`` (a free TCP port on 127.0.0.1, a temporary
directory, ``appendonly yes``, ``appendfsync everysec``) and their own ``aqnode serve``
nodes on the ``tests.handlers.testkit`` handlers (``AQ_TEST_REDIS_URL`` in the nodes'
environment, as tests/node_fixture.py does; cost runs ``bench.handlers`` by default), one
shard each by default. Cluster nodes are ``n1``, ``n2``, ``n3`` with ``[cluster] enabled =
true`` and the SPEC defaults ``heartbeat_ms = 400``, ``node_ttl_ms = 1500``,
``leader_debounce_ms = 800``.

**failover** (SPEC 10.1 "Failover"; under 2 minutes for 20 kills on 2 cores). Senders
(``--senders``, each its own ``Client`` given all three addresses, owner-aware routing)
send ``Incr(name, sender, seq)`` over ``--failover-entities`` entity slots; each sender
runs ``--lanes`` concurrent lanes, a lane owns a fixed share of the slots and sends one
message at a time, so a sender pipelines across entities but never sends seq n+1 of an
entity before seq n is acknowledged. Every ``--rotate-s`` seconds (2) each slot moves on
to a fresh entity name (``e<slot>g<n>``), so that the master keeps placing new entities,
some on the node restarted last, and every kill hits entities with messages running and
queued on the victim (with fixed names the entities leave the first victim for good and
later kills miss the load). Message ids are chosen by the sender
(``<sender>-<entity>-<seq>``); a call that fails (``UNAVAILABLE``,
``MASTER_REBUILDING``, ``REDIS_UNAVAILABLE``, ...) is resent under the same id until it
is acknowledged. Then, ``--kills`` times: find the master (a live node's status),
``kill -9`` its process group (supervisor and shard), time from the kill to the first
successful ``enqueue_and_wait(WhoRuns(<fresh entity>))`` through a survivor (a probe
every 50 ms, alternating between the survivors, each with a 1 s timeout), restart the
killed node with its server_id and wait until all three report one master and epoch and
three live members. Finally the load stops, every acknowledged id must have run (Redis
list ``t:ran``) or be dead-lettered, and the checks are: no id twice in ``t:ran``; no
acknowledged id that neither ran nor is dead-lettered ``interrupted``; per sender and
entity, ``t:order:<entity>:<sender>`` strictly increasing, a missing seq only where that
message was dead-lettered. Exit 1 if a check fails or the slowest failover exceeds the
SPEC bound ``node_ttl_ms + leader_debounce_ms + 1 s`` (3.3 s).

**cost** (about 1.5 minutes for ``--runs 3`` with ``--handler ping``, under 1 minute with
``--handler incr``, on 2 cores). The same fire-and-forget workload (``--entities`` x ``--messages``;
``asyncio.gather`` of single ``enqueue`` calls in chunks of ``--chunk``) against (i) one
standalone node (``--single-shards``), (i-b) the same node in cluster mode alone in its
group (``[cluster] enabled = true``, its own key prefix, so its own group keys: the cost
of cluster mode without any forwarding), (ii) the 3-node cluster with a
``Client(address, follow_owners=False)`` per node and a random node per call, (iii) the
cluster with one ``Client`` given all three addresses (owner-aware routing). The
cost-scenario nodes run ``--handler``:

- ``ping`` (the default; 1,000 entities x 100 messages): ``bench.handlers``' ``Ping``, a
  no-op, so the figures are the nodes' own cost (validation on the node called, the
  forward hop, petitions) rather than the handler's. A run is done when the shards'
  ``handled`` counts from ``Client.status()``, summed over the configuration's nodes, have
  grown by the messages sent and no message is live (bench/run.py's ``wait_handled``);
  the shards report their counts with every heartbeat (``shard_heartbeat_ms`` 50 on all
  the cost scenario's nodes, either handler) and the benchmark polls every 50 ms.
- ``incr`` (1,000 entities x 10 messages): ``tests.handlers.testkit``'s ``Incr`` without a
  sender (a ``GET``, 1 ms of awaited sleep, a ``SET`` and an ``RPUSH t:ran`` per message:
  four Redis round trips in the handler, which dominate the node CPU); a run is done when
  ``LLEN t:ran`` reaches the messages sent.

Before each measured run one message per entity warms the entities up (placement,
workers, the client's learned routes). CPU seconds (psutil, user + system) of every node
process serving the configuration (supervisors and shards, summed), of redis-server and of
this benchmark process per 1,000 messages, and Redis commands per message. The
configurations take turns within each run, and the ratios (i-b)/(i), (ii)/(i) and
(iii)/(i) are taken per run. Every process runs on this machine: the cluster figures
include three supervisors and their shards sharing its cores with Redis and the benchmark
client, and the idle nodes of the other configurations heartbeat while one is measured.
Shard counts differ: (i) and (i-b) have ``--single-shards`` (default ``--shards``, 1),
the cluster ``--shards`` per node (3 in all by default).

Every process gets PR_SET_PDEATHSIG and is stopped on the way out; traffic stays on
127.0.0.1. The working directory (node logs in ``node-<id>/node.log``) is removed unless
``--keep`` or the failover checks failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import redis.asyncio as aioredis

from aqnode.client import Client, NodeStatus
from aqnode.errors import AqError
from aqnode.wal.dlq import DeadLetterQueue
from aqnode.wal.keys import LogKeys
from bench.handlers import Ping
from bench.probe import Probe, percentile
from bench.procs import (
    NodeProc,
    NodeSpec,
    RedisProc,
    aqnode_serve,
    redis_server,
    tail,
    wait_ready,
)
from tests.handlers.testkit import Incr, WhoRuns

IDS = ("n1", "n2", "n3")
KEY_PREFIX = "aq"
HEARTBEAT_MS = 400  #: SPEC 9 defaults for [cluster], written out so the bound follows them
NODE_TTL_MS = 1500
LEADER_DEBOUNCE_MS = 800
BOUND_S = (NODE_TTL_MS + LEADER_DEBOUNCE_MS) / 1000 + 1.0  #: SPEC 10.1 "Failover"
SHARD_HEARTBEAT_MS = 200
IDLE_TIMEOUT_MS = 30_000

PROBE_EVERY_S = 0.05  #: a new failover probe this often
PROBE_TIMEOUT_S = 1.0  #: each probe's enqueue_and_wait timeout
SERVE_LIMIT_S = 30.0  #: a group that does not serve within this is a finding (a hang)
AGREE_TIMEOUT_S = 30.0  #: a restarted node must be agreed on within this
READY_TIMEOUT_S = 60.0
RESTART_ATTEMPTS = 10  #: a restart refused (server_id still live) is tried again
PROGRESS_ACKS = 50  #: new acks to see after each kill before the next
PROGRESS_TIMEOUT_S = 30.0
STUCK_S = 30.0  #: a message unacknowledged this long is reported (it is still resent)
STOP_GRACE_S = 60.0  #: at the end, in-flight sends get this long to be acknowledged
SETTLE_IDLE_S = 30.0  #: settling gives up when nothing changed this long


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def blank(text: str) -> str:
    """``text`` with numbers and addresses blanked, to group alike error messages."""
    return re.sub(r"\d+(\.\d+)*(:\d+)?", "N", text)[:160]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(values: Any) -> list[str]:
    """A Redis reply's list of bytes as str."""
    return [text(v) for v in values]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"nproc": os.cpu_count(), "usable_cpus": usable, "cpu_model": model}


def node_spec(
    name: str,
    redis_url: str,
    shards: int,
    *,
    cluster: bool,
    key_prefix: str = KEY_PREFIX,
    handlers: str = "tests.handlers.testkit",
    entity_type: str = "counter",
    shard_heartbeat_ms: int = SHARD_HEARTBEAT_MS,
) -> NodeSpec:
    table: tuple[tuple[str, bool | int | str], ...] = ()
    if cluster:
        table = (
            ("enabled", True),
            ("heartbeat_ms", HEARTBEAT_MS),
            ("node_ttl_ms", NODE_TTL_MS),
            ("leader_debounce_ms", LEADER_DEBOUNCE_MS),
        )
    return NodeSpec(
        name=name,
        shards=shards,
        idle_timeout_ms=IDLE_TIMEOUT_MS,
        heartbeat_ms=shard_heartbeat_ms,
        key_prefix=key_prefix,
        handlers=handlers,
        entity_type=entity_type,
        server_id=name,
        cluster=table,
        env=(("AQ_TEST_REDIS_URL", redis_url),),
    )


@contextlib.contextmanager
def cluster_nodes(workdir: Path, redis_url: str, shards: int) -> Iterator[list[NodeProc]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                aqnode_serve(workdir, redis_url, node_spec(sid, redis_url, shards, cluster=True))
            )
            for sid in IDS
        ]


async def node_status(address: str, timeout: float = 1.0) -> NodeStatus | None:
    """One node's status through a fresh Client (no state left from a dead node)."""
    try:
        async with Client(address) as client:
            return await client.status(timeout=timeout)
    except AqError:
        return None


async def agreement(nodes: Sequence[NodeProc]) -> tuple[str, int] | None:
    """(master, epoch) when every node answers, all report one master and epoch, the
    master is the lowest server_id and all of them are live members."""
    seen = await asyncio.gather(*(node_status(n.address) for n in nodes))
    views = set()
    for s in seen:
        if s is None:
            return None
        views.add((s.master, s.epoch, frozenset(m.server_id for m in s.members if m.alive)))
    if len(views) != 1:
        return None
    master, epoch, alive = views.pop()
    wanted = {n.spec.server_id for n in nodes}
    if master != min(wanted) or alive != wanted:
        return None
    return master, epoch


async def wait_agreement(nodes: Sequence[NodeProc], timeout: float) -> tuple[str, int] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await agreement(nodes)
        if found is not None:
            return found
        await asyncio.sleep(0.1)
    return None


# ---- failover: the load ------------------------------------------------------------------


@dataclass
class Load:
    """Senders that resend each message under its id until it is acknowledged."""

    addresses: list[str]
    senders: int
    lanes: int
    entities: int
    pause_s: float
    rotate_s: float  #: 0: fixed entity names; else each slot takes a fresh name this often
    acked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> e, s, seq
    ack_times: list[float] = field(default_factory=list)  # monotonic
    resent: Counter[str] = field(default_factory=Counter)  # failure code -> resends
    examples: dict[str, str] = field(default_factory=dict)  # code -> an error message
    stuck: list[str] = field(default_factory=list)
    unacked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # gave up
    id_mismatches: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self.stopping = asyncio.Event()
        self.give_up = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._sender(i)) for i in range(self.senders)]

    async def stop(self) -> None:
        """No new message; in-flight ones get STOP_GRACE_S to be acknowledged."""
        self.stopping.set()
        _, pending = await asyncio.wait(self.tasks, timeout=STOP_GRACE_S)
        if pending:
            self.give_up.set()
            await asyncio.wait(pending, timeout=10)
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a sender failed: {task.exception()!r}")

    async def _sender(self, index: int) -> None:
        name = f"s{index}"
        slots = list(range(self.entities))
        async with Client(self.addresses) as bus:
            await asyncio.gather(
                *(self._lane(bus, name, slots[lane :: self.lanes]) for lane in range(self.lanes))
            )

    def entity(self, slot: int) -> str:
        """The slot's entity now: ``e<slot>``, or ``e<slot>g<generation>`` when rotating
        (the same name for every sender at a given time)."""
        if not self.rotate_s:
            return f"e{slot}"
        return f"e{slot}g{int((time.monotonic() - self.t0) // self.rotate_s)}"

    async def _lane(self, bus: Client, sender: str, slots: list[int]) -> None:
        if not slots:
            return
        seqs: Counter[str] = Counter()  # entity -> this sender's next seq
        for slot in itertools.cycle(slots):
            if self.stopping.is_set():
                return
            entity = self.entity(slot)
            seq = seqs[entity]
            seqs[entity] = seq + 1
            await self._deliver(bus, Incr(name=entity, sender=sender, seq=seq), sender)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    async def _deliver(self, bus: Client, msg: Incr, sender: str) -> None:
        mid = f"{sender}-{msg.name}-{msg.seq}"
        meta = (msg.name, sender, msg.seq)
        first = time.monotonic()
        delay, reported = 0.02, False
        self.sent += 1
        while True:
            try:
                got = await bus.enqueue(msg, message_id=mid)
            except AqError as exc:
                code = exc.code
                self.examples.setdefault(code, exc.message[:200])
            except Exception as exc:  # a client bug: counted, and resent like a failure
                code = f"exception:{type(exc).__name__}"
                self.examples.setdefault(code, str(exc)[:200])
            else:
                if got != mid:
                    self.id_mismatches += 1
                self.acked[mid] = meta
                self.ack_times.append(time.monotonic())
                return
            self.resent[code] += 1
            if not reported and time.monotonic() - first > STUCK_S:
                reported = True
                self.stuck.append(f"{mid}: not acknowledged after {STUCK_S:.0f}s (last {code})")
            if self.give_up.is_set():
                self.unacked[mid] = meta
                return
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 2)


# ---- failover: kills -----------------------------------------------------------------------


@dataclass
class Kill:
    index: int
    victim: str
    epoch_before: int
    serve_s: float | None = None  #: kill -> first successful probe
    probes: int = 0
    probe_failures: dict[str, int] = field(default_factory=dict)
    new_master: str = ""
    epoch_after: int = 0
    restart_attempts: int = 0
    rejoin_s: float | None = None  #: restart -> all three agree again
    max_ack_gap_s: float = 0.0  #: the load's longest pause in acks around the kill


def kill_group(node: NodeProc) -> float:
    """kill -9 the node's process group (supervisor and shards); returns the kill time."""
    pids = node.pids()
    killed = time.monotonic()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(node.proc.pid, signal.SIGKILL)
    for pid in pids[1:]:  # a shard that left the group (it should not have)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    node.proc.wait(10)
    return killed


async def time_to_serve(survivors: list[NodeProc], killed: float, kill: Kill) -> asyncio.Task[None]:
    """Probe every PROBE_EVERY_S, alternating between the survivors, with a fresh entity
    each time, until one ``enqueue_and_wait(WhoRuns)`` succeeds. Returns a task that
    waits for the probes still out and closes their Clients."""
    clients = [Client(n.address, follow_owners=False) for n in survivors]
    failures: Counter[str] = Counter()
    first: list[float] = []
    served = asyncio.Event()

    async def probe(client: Client, name: str) -> None:
        try:
            await client.enqueue_and_wait(WhoRuns(name=name), timeout=PROBE_TIMEOUT_S)
        except AqError as exc:
            failures[exc.code] += 1
            return
        except Exception as exc:
            failures[f"exception:{type(exc).__name__}"] += 1
            return
        first.append(time.monotonic() - killed)
        served.set()

    tasks: list[asyncio.Task[None]] = []
    for n in itertools.count():
        if served.is_set() or time.monotonic() - killed > SERVE_LIMIT_S:
            break
        name = f"fo{kill.index}-{n}"
        tasks.append(asyncio.create_task(probe(clients[n % len(clients)], name)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(served.wait(), PROBE_EVERY_S)
    kill.probes = len(tasks)
    kill.serve_s = min(first) if first else None
    kill.probe_failures = dict(failures)  # up to the first success

    async def finish() -> None:
        """The probes still out finish (their timeout) while the victim restarts."""
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=PROBE_TIMEOUT_S + 5)
        finally:
            for client in clients:
                await client.close()

    return asyncio.create_task(finish())


async def wait_up(node: NodeProc, timeout: float = READY_TIMEOUT_S) -> bool:
    """True when every shard of the node is alive; False if it exited (refused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            return False
        status = await node_status(node.address)
        if status is not None and status.shards and all(s.alive for s in status.shards):
            return True
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{node.spec.server_id} did not get ready:\n{tail(node.log_path)}")


async def restart(node: NodeProc, kill: Kill) -> None:
    for attempt in range(1, RESTART_ATTEMPTS + 1):
        kill.restart_attempts = attempt
        node.respawn()
        if await wait_up(node):
            return
        say(
            f"  {node.spec.server_id} exited at start ({node.proc.returncode}), "
            f"attempt {attempt}: {tail(node.log_path, 2)}"
        )
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{node.spec.server_id} did not restart in {RESTART_ATTEMPTS} attempts")


def max_gap(times: list[float], start: float, end: float) -> float:
    window = sorted([start, *(t for t in times if start <= t <= end), end])
    return max((b - a for a, b in itertools.pairwise(window)), default=0.0)


@dataclass
class Failover:
    args: argparse.Namespace
    workdir: Path
    findings: list[str] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.args.seed)  #: the pauses between kills

    async def run(self) -> dict[str, Any]:
        args = self.args
        with (
            redis_server(self.workdir / "redis", aof=True) as server,
            cluster_nodes(self.workdir, server.url, args.shards) as nodes,
        ):
            for node in nodes:
                await wait_ready(node)
            formed = await wait_agreement(nodes, 30.0)
            if formed is None:
                raise RuntimeError("the three nodes did not agree on a master in 30 s")
            say(
                f"cluster formed: master {formed[0]} epoch {formed[1]}; "
                + ", ".join(f"{n.spec.server_id} {n.address} pid {n.proc.pid}" for n in nodes)
            )
            load = Load(
                [n.address for n in nodes],
                args.senders,
                args.lanes,
                args.entities,
                args.pause_ms / 1000,
                args.rotate_s,
            )
            load.start()
            started = time.monotonic()
            try:
                if not await self.progress(load, PROGRESS_ACKS * 4):
                    self.findings.append("the load made no progress before the first kill")
                else:
                    await self.storm(nodes, load)
                await asyncio.sleep(1.0)
            finally:
                say(f"stopping the load ({len(load.acked)} acknowledged)")
                await load.stop()
            storm_s = time.monotonic() - started
            with server.client() as r:
                settled = await self.settle(nodes, load, r)
                summary = self.analyse(load, r)
            summary.update(settled=settled, storm_s=storm_s)
            summary["node_logs"] = {n.spec.server_id: str(n.log_path) for n in nodes}
            summary["node_log_errors"] = {n.spec.server_id: log_errors(n.log_path) for n in nodes}
        return summary

    async def progress(self, load: Load, count: int) -> bool:
        target = len(load.acked) + count
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while len(load.acked) < target:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def storm(self, nodes: list[NodeProc], load: Load) -> None:
        by_id = {n.spec.server_id: n for n in nodes}
        for index in range(1, self.args.kills + 1):
            status = next(
                (s for s in await asyncio.gather(*(node_status(n.address) for n in nodes)) if s),
                None,
            )
            if status is None:
                self.findings.append(f"kill {index}: no node answered status")
                return
            victim = by_id[status.master]
            kill = Kill(index, victim.spec.server_id, status.epoch)
            survivors = [n for n in nodes if n is not victim]
            killed = kill_group(victim)
            probes_out = await time_to_serve(survivors, killed, kill)
            after = await asyncio.gather(*(node_status(n.address) for n in survivors))
            kill.new_master = ",".join(sorted({s.master for s in after if s}))
            kill.epoch_after = max((s.epoch for s in after if s), default=0)
            self.kills.append(kill)
            if kill.serve_s is None:
                self.findings.append(
                    f"kill {index} ({kill.victim}): the survivors did not serve a new entity "
                    f"within {SERVE_LIMIT_S:.0f}s (probe failures {kill.probe_failures})"
                )
                say(f"kill {index}: NOT SERVING after {SERVE_LIMIT_S:.0f}s; stopping")
                await probes_out
                return
            restarted = time.monotonic()
            await restart(victim, kill)
            agreed = await wait_agreement(nodes, AGREE_TIMEOUT_S)
            await probes_out
            if agreed is None:
                self.findings.append(
                    f"kill {index}: after restarting {kill.victim} the nodes did not agree "
                    f"on one master and epoch with 3 live members within {AGREE_TIMEOUT_S:.0f}s"
                )
                say(f"kill {index}: no agreement after the restart; stopping")
                return
            kill.rejoin_s = time.monotonic() - restarted
            progressed = await self.progress(load, PROGRESS_ACKS)
            kill.max_ack_gap_s = max_gap(load.ack_times, killed, time.monotonic())
            say(
                f"kill {index}/{self.args.kills}: {kill.victim} (epoch {kill.epoch_before}) -> "
                f"served in {kill.serve_s * 1000:.0f} ms by master {kill.new_master} "
                f"(epoch {kill.epoch_after}, {kill.probes} probes, failures "
                f"{kill.probe_failures or '-'}); restarted, agreed {agreed[0]}/{agreed[1]} in "
                f"{kill.rejoin_s:.1f}s; acked {len(load.acked)}, longest ack gap "
                f"{kill.max_ack_gap_s:.2f}s"
            )
            if not progressed:
                self.findings.append(
                    f"kill {index}: fewer than {PROGRESS_ACKS} acks in "
                    f"{PROGRESS_TIMEOUT_S:.0f}s after the group agreed again"
                )
                return
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.args.pause)

    async def settle(self, nodes: list[NodeProc], load: Load, r: redis.Redis) -> bool:
        """Wait until every acknowledged id ran or is dead-lettered and nothing is live."""
        dlq = DeadLetterQueue(r, KEY_PREFIX)
        deadline = time.monotonic() + self.args.settle_timeout
        last, changed = None, time.monotonic()
        while True:
            ran = set(texts(r.lrange("t:ran", 0, -1)))
            dead = {d.message_id for d in dlq.entries()}
            missing = sum(1 for mid in load.acked if mid not in ran and mid not in dead)
            statuses = await asyncio.gather(*(node_status(n.address, 5.0) for n in nodes))
            live = sum(s.live_messages for s in statuses if s) if all(statuses) else -1
            if missing == 0 and live == 0:
                return True
            seen = (len(ran), len(dead), missing, live)
            if seen != last:
                last, changed = seen, time.monotonic()
            idle = time.monotonic() - changed
            if time.monotonic() > deadline or idle > SETTLE_IDLE_S:
                why = f"nothing changed for {idle:.0f}s" if idle > SETTLE_IDLE_S else "timeout"
                self.findings.append(
                    f"not settled ({why}): {missing} acknowledged ids neither ran nor were "
                    f"dead-lettered, {live} live messages (-1: a node did not answer)"
                )
                return False
            await asyncio.sleep(0.5)

    def analyse(self, load: Load, r: redis.Redis) -> dict[str, Any]:
        runs = Counter(texts(r.lrange("t:ran", 0, -1)))
        duplicates = sorted(mid for mid, n in runs.items() if n > 1)
        letters = DeadLetterQueue(r, KEY_PREFIX).entries()
        reasons = {d.message_id: d.reason for d in letters}
        interrupted = {mid for mid, why in reasons.items() if why == "interrupted"}
        lost = sorted(mid for mid in load.acked if mid not in runs and mid not in interrupted)
        lost_states: dict[str, str] = {}
        for mid in lost:
            states = []
            for sid in IDS:
                state = r.hget(LogKeys(KEY_PREFIX, sid).entry(mid), "state")
                if state:
                    states.append(f"{sid}:{text(state)}")
            if mid in reasons:
                states.append(f"dead-lettered {reasons[mid]}")
            lost_states[mid] = ", ".join(states) or "no log entry"
        # FIFO per sender and entity: t:order strictly increasing; a seq missing only
        # where that message was dead-lettered (or never acknowledged)
        fifo: list[str] = []
        pairs: dict[tuple[str, str], list[int]] = {}
        for entity, sender, seq in [*load.acked.values(), *load.unacked.values()]:
            pairs.setdefault((entity, sender), []).append(seq)
        for (entity, sender), seqs in sorted(pairs.items()):
            order = [int(x) for x in texts(r.lrange(f"t:order:{entity}:{sender}", 0, -1))]
            for a, b in itertools.pairwise(order):
                if b <= a:
                    fifo.append(f"{entity}/{sender}: seq {b} ran after seq {a}")
            present = set(order)
            for seq in sorted(seqs):
                mid = f"{sender}-{entity}-{seq}"
                if seq not in present and mid not in reasons and mid not in load.unacked:
                    fifo.append(f"{entity}/{sender}: seq {seq} ({mid}) missing, not dead-lettered")
        dead_acked = [mid for mid in load.acked if mid in reasons]
        other_dead = sorted(mid for mid in dead_acked if reasons[mid] != "interrupted")
        serve = sorted(k.serve_s * 1000 for k in self.kills if k.serve_s is not None)
        return {
            "kills": len(self.kills),
            "serve_ms": serve,
            "serve_p50_ms": percentile(serve, 50) if serve else None,
            "serve_p90_ms": percentile(serve, 90) if serve else None,
            "serve_max_ms": serve[-1] if serve else None,
            "bound_ms": BOUND_S * 1000,
            "acked": len(load.acked),
            "entity_names": len({entity for entity, _, _ in load.acked.values()}),
            "sent": load.sent,
            "unacked_at_stop": len(load.unacked),
            "duplicates": len(duplicates),
            "lost": len(lost),
            "fifo_violations": len(fifo),
            "dead_lettered_interrupted": sum(1 for mid in dead_acked if mid in interrupted),
            "dead_lettered_interrupted_ran": sum(
                1 for mid in dead_acked if mid in interrupted and mid in runs
            ),
            "dead_lettered_other": len(other_dead),
            "dead_letter_reasons": dict(Counter(reasons.values())),
            "ran_not_acked": sum(1 for mid in runs if mid not in load.acked),
            "resent": dict(load.resent),
            "resend_examples": load.examples,
            "stuck": load.stuck,
            "id_mismatches": load.id_mismatches,
            "examples": {
                "duplicates": duplicates[:5],
                "lost": [f"{m}: {lost_states[m]}" for m in lost[:5]],
                "fifo": fifo[:5],
                "dead_lettered_other": [f"{m}: {reasons[m]}" for m in other_dead[:5]],
            },
            "kill_log": [asdict(k) for k in self.kills],
        }


def log_errors(path: Path) -> dict[str, int]:
    """ERROR / CRITICAL lines and tracebacks in a node's log, numbers blanked."""
    found: Counter[str] = Counter()
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                found[blank(line.split(": ", 1)[-1])] += 1
    return dict(found.most_common(8))


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_failover(s: dict[str, Any]) -> None:
    m = s["machine"]
    out = [
        "",
        f"## Cluster failover: {s['kills']} kills of the master (seed {s['seed']})",
        "",
        f"3 nodes (n1, n2, n3; {s['shards']} shard each), heartbeat_ms {HEARTBEAT_MS}, "
        f"node_ttl_ms {NODE_TTL_MS}, leader_debounce_ms {LEADER_DEBOUNCE_MS}; "
        f"{s['senders']} senders x {s['lanes']} lanes over {s['entities']} entities at a time "
        + (f"(fresh names every {s['rotate_s']:g} s, " if s["rotate_s"] else "(")
        + f"{s['entity_names']} in all); "
        f"{m['nproc']} CPUs ({m['cpu_model']}), all processes on this machine.",
        "Time to first success: from kill -9 of the master's process group to the first "
        "successful enqueue_and_wait(WhoRuns(<fresh entity>)) through a survivor.",
        "",
        "| kills | first success p50 (ms) | p90 (ms) | max (ms) | SPEC bound (ms) | "
        "acknowledged | duplicates | lost | FIFO violations | dead-lettered interrupted |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['kills']} | {fmt_ms(s['serve_p50_ms'])} | {fmt_ms(s['serve_p90_ms'])} | "
        f"{fmt_ms(s['serve_max_ms'])} | {s['bound_ms']:.0f} | {s['acked']} | "
        f"{s['duplicates']} | {s['lost']} | {s['fifo_violations']} | "
        f"{s['dead_lettered_interrupted']} |",
        "",
    ]
    rejoin = [k["rejoin_s"] for k in s["kill_log"] if k["rejoin_s"] is not None]
    gaps = [k["max_ack_gap_s"] for k in s["kill_log"]]
    if rejoin:
        out.append(
            f"restart of the killed node to agreement of all three: median "
            f"{statistics.median(rejoin):.1f}s, max {max(rejoin):.1f}s; the load's longest "
            f"pause in acknowledgements around a kill: median {statistics.median(gaps):.2f}s, "
            f"max {max(gaps):.2f}s"
        )
    out.append(
        f"messages sent {s['sent']}, acknowledged {s['acked']}, not acknowledged at the end "
        f"{s['unacked_at_stop']}; dead-lettered interrupted that had run to the end "
        f"{s['dead_lettered_interrupted_ran']}; dead-lettered for another reason "
        f"{s['dead_lettered_other']}; settled {s['settled']}"
    )
    resent = ", ".join(f"{k} {v}" for k, v in sorted(s["resent"].items())) or "none"
    out.append(f"sends that failed and were resent under the same id: {resent}")
    for code, text in sorted(s["resend_examples"].items()):
        out.append(f"  e.g. {code}: {text}")
    for key, examples in s["examples"].items():
        if examples:
            out.append(f"{key}, e.g.:")
            out += [f"  {e}" for e in examples]
    if s["stuck"]:
        out.append(f"messages unacknowledged for over {STUCK_S:.0f}s: {len(s['stuck'])}")
        out += [f"  {e}" for e in s["stuck"][:5]]
    for sid, errors in s["node_log_errors"].items():
        if errors:
            out.append(f"{sid} log ERROR lines / tracebacks ({s['node_logs'][sid]}):")
            out += [f"  {n:>5} x {text}" for text, n in errors.items()]
    if s["findings"]:
        out.append("findings:")
        out += [f"  - {f}" for f in s["findings"]]
    out += ["", "RESULT: " + ("PASS" if s["passed"] else "FAIL")]
    print("\n".join(out), flush=True)


async def run_failover(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    failover = Failover(args, workdir)
    say(
        f"failover: {args.kills} kills, {args.senders} senders x {args.lanes} lanes, "
        f"{args.entities} entities, seed {args.seed}, workdir {workdir}"
    )
    summary = await failover.run()
    summary["findings"] = failover.findings
    worst = summary["serve_max_ms"]
    summary["passed"] = (
        not failover.findings
        and summary["kills"] == args.kills
        and summary["settled"]
        and worst is not None
        and worst <= BOUND_S * 1000
        and all(
            summary[k] == 0
            for k in ("duplicates", "lost", "fifo_violations", "dead_lettered_other")
        )
    )
    if worst is not None and worst > BOUND_S * 1000:
        failover.findings.append(
            f"the slowest failover took {worst:.0f} ms, over the SPEC bound {BOUND_S * 1000:.0f}"
        )
    summary.update(
        seed=args.seed,
        shards=args.shards,
        senders=args.senders,
        lanes=args.lanes,
        entities=args.entities,
        rotate_s=args.rotate_s,
        machine=machine(),
        workdir=str(workdir),
    )
    print_failover(summary)
    return summary


# ---- cost -------------------------------------------------------------------------------------

CONFIGS = (
    ("single", "(i) one node, standalone"),
    ("one", "(i-b) one-member cluster"),
    ("random", "(ii) cluster, random node per call"),
    ("owner", "(iii) cluster, owner-aware Client"),
)
VERSUS = ("one", "random", "owner")  #: compared with (i), run by run
COST_SHARD_HEARTBEAT_MS = 50  #: the shards report their handled counts this often
POLL_S = 0.05  #: status polls while waiting for the handled counts (ping)


@dataclass(frozen=True)
class Handler:
    """What the cost scenario's nodes run, and how a message for an entity is made."""

    module: str  #: the nodes' handler module
    entity_type: str
    message: str  #: the message's name, for the report
    make: Callable[[str], Ping | Incr]  #: the message for an entity id


HANDLERS = {
    "ping": Handler("bench.handlers", "bench", "Ping", lambda entity: Ping(id=entity)),
    "incr": Handler("tests.handlers.testkit", "counter", "Incr", lambda entity: Incr(name=entity)),
}
MESSAGES = {"ping": 100, "incr": 10}  #: --messages per entity by default (runs of 3-8 s)


@dataclass
class Cost:
    args: argparse.Namespace
    server: RedisProc
    single: NodeProc  #: standalone
    one: NodeProc  #: cluster mode, alone in its group
    nodes: list[NodeProc]  #: the 3-node cluster
    probe: Probe
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.handler = HANDLERS[self.args.handler]
        #: one status Client per node (follow_owners=False), kept for the whole scenario:
        #: no connection set-up per poll on the nodes measured
        self.watch: dict[str, Client] = {}

    def serving(self, config: str) -> list[NodeProc]:
        if config == "single":
            return [self.single]
        if config == "one":
            return [self.one]
        return self.nodes

    async def run(self) -> None:
        args = self.args
        store = aioredis.Redis.from_url(self.server.url)
        try:
            for node in [self.single, self.one, *self.nodes]:
                self.watch[node.address] = client = Client(node.address, follow_owners=False)
                await client.connect()
            for run in range(args.runs):
                for config, _label in CONFIGS:
                    metrics = await self.measure(store, config, run)
                    self.results.setdefault(config, []).append(metrics)
                    say(
                        f"cost run {run + 1} {config}: {metrics['msgs_per_s']:.0f} msg/s, "
                        f"node CPU {metrics['system_cpu_s_per_1k']:.3f} s/1k, redis "
                        f"{metrics['redis_cpu_s_per_1k']:.3f} s/1k, client "
                        f"{metrics['bench_cpu_s_per_1k']:.3f} s/1k"
                        + (f", routes {metrics['routes']:.0f}" if "routes" in metrics else "")
                    )
        finally:
            for client in self.watch.values():
                await client.close()
            await store.aclose()

    async def measure(self, store: aioredis.Redis, config: str, run: int) -> dict[str, float]:
        args = self.args
        ping = args.handler == "ping"
        nodes = self.serving(config)
        await self.idle(nodes)
        tag = f"{config}{run}"
        names = [f"{tag}-{e}" for e in range(args.entities)]
        rng = random.Random(args.seed * 1000 + run)
        if config in ("single", "one"):
            clients = [Client(nodes[0].address)]
        elif config == "random":
            clients = [Client(n.address, follow_owners=False) for n in self.nodes]
        else:
            clients = [Client([n.address for n in self.nodes])]
        try:
            for client in clients:
                await client.connect()

            def pick() -> Client:
                return clients[0] if len(clients) == 1 else rng.choice(clients)

            async def send(msgs: list[Ping | Incr]) -> None:
                for start in range(0, len(msgs), args.chunk):
                    chunk = msgs[start : start + args.chunk]
                    await asyncio.gather(*(pick().enqueue(m) for m in chunk))

            # warm-up: one message per entity (placement, workers, learned routes)
            if ping:
                # the shards' counts arrive with their heartbeats: let the last ones in
                await asyncio.sleep(3 * COST_SHARD_HEARTBEAT_MS / 1000)
                counted = await self.handled(nodes)
                await send([self.handler.make(n) for n in names])
                _, counted = await self.wait_handled(nodes, counted + len(names))
            else:
                await store.delete("t:ran")
                await send([self.handler.make(n) for n in names])
                await self.wait_ran(store, len(names))
                await self.idle(nodes)
                await store.delete("t:ran")
            msgs = [self.handler.make(n) for _ in range(args.messages) for n in names]
            pids = [pid for n in nodes for pid in n.pids()]
            before = self.probe.snapshot(pids)
            await send(msgs)
            acked = time.perf_counter()
            if ping:
                done, final = await self.wait_handled(nodes, counted + len(msgs))
                after = self.probe.snapshot(pids)
                ran = final - counted
            else:
                done = await self.wait_ran(store, len(msgs))
                await self.idle(nodes)
                after = self.probe.snapshot(pids)
                ran = int(await store.llen("t:ran"))
            routes = len(clients[0]._routes) if config == "owner" else None
        finally:
            for client in clients:
                await client.close()
        elapsed = done - before.at
        metrics: dict[str, float] = {
            "messages": float(len(msgs)),
            "elapsed_s": elapsed,
            "msgs_per_s": len(msgs) / elapsed,
            "acked_per_s": len(msgs) / (acked - before.at),
            "ran_extra": float(ran - len(msgs)),
            **self.probe.costs(before, after, len(msgs)),
        }
        if routes is not None:
            metrics["routes"] = float(routes)
        if ran != len(msgs):
            say(f"  warning: {ran} runs for {len(msgs)} messages in {config} run {run + 1}")
        return metrics

    async def statuses(self, nodes: list[NodeProc]) -> list[NodeStatus]:
        return list(
            await asyncio.gather(*(self.watch[n.address].status(timeout=10.0) for n in nodes))
        )

    async def handled(self, nodes: list[NodeProc]) -> int:
        """Messages the nodes' shards have handled since they started (as of their last
        heartbeats), summed."""
        return sum(s.handled for st in await self.statuses(nodes) for s in st.shards)

    async def wait_handled(self, nodes: list[NodeProc], count: int) -> tuple[float, int]:
        """(perf_counter(), the handled count) when the nodes' shards have handled
        ``count`` messages in all and no message is live on any of them (bench/run.py's
        ``wait_handled``, over several nodes)."""
        last, progress = -1, time.monotonic()
        while True:
            seen = await self.statuses(nodes)
            n = sum(s.handled for st in seen for s in st.shards)
            if n >= count and all(st.live_messages == 0 for st in seen):
                return time.perf_counter(), n
            if n != last:
                last, progress = n, time.monotonic()
            elif time.monotonic() - progress > 60:
                raise RuntimeError(f"the nodes handled {n} of {count} messages, none for 60 s")
            await asyncio.sleep(POLL_S)

    async def wait_ran(self, store: aioredis.Redis, count: int) -> float:
        """perf_counter() when ``LLEN t:ran`` reached ``count``."""
        last, progress = -1, time.monotonic()
        while True:
            n = int(await store.llen("t:ran"))
            if n >= count:
                return time.perf_counter()
            if n != last:
                last, progress = n, time.monotonic()
            elif time.monotonic() - progress > 60:
                raise RuntimeError(f"only {n} of {count} messages ran, none for 60 s")
            await asyncio.sleep(0.01)

    async def idle(self, nodes: list[NodeProc], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.live_messages == 0 for s in await self.statuses(nodes)):
                return
            await asyncio.sleep(0.05)
        say("  warning: the nodes did not go idle")


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_cost(s: dict[str, Any]) -> None:
    m = s["machine"]
    results: dict[str, list[dict[str, float]]] = s["results"]
    done = (
        "the shards' handled counts (status, summed over the configuration's nodes) reach "
        "the count sent and no message is live"
        if s["handler"] == "ping"
        else "LLEN t:ran reaches the count sent"
    )
    work = (
        "bench.handlers, a no-op handler"
        if s["handler"] == "ping"
        else "tests.handlers.testkit: GET, 1 ms of awaited sleep, SET, RPUSH t:ran"
    )
    out = [
        "",
        f"## Cluster cost: {s['entities']} entities x {s['messages']} {s['message']} "
        f"({work}), pipelined (gather of {s['chunk']} enqueue calls), {s['runs']} runs, "
        "medians",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}). Every process runs on it, sharing "
        f"{m['usable_cpus']} cores: Redis, this benchmark client, the standalone node, the "
        "one-member cluster node and the three cluster nodes (the idle ones heartbeat while "
        "another configuration is measured). Shard counts differ: the standalone node (i) "
        f"and the one-member cluster (i-b) have {s['single_shards']} shard(s); the cluster "
        f"nodes have {s['shards']} shard(s) each, {3 * s['shards']} in all. Node CPU: the "
        "supervisors and shards of the node(s) serving the configuration, summed; client "
        f"CPU: this benchmark process. A run is done when {done}.",
        "",
        "| configuration | msg/s | node CPU s / 1k msg | Redis CPU s / 1k msg | "
        "client CPU s / 1k msg | Redis cmds / msg |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config, label in CONFIGS:
        runs = results[config]
        out.append(
            f"| {label} | {median_of(runs, 'msgs_per_s'):.0f} | "
            f"{median_of(runs, 'system_cpu_s_per_1k'):.3f} | "
            f"{median_of(runs, 'redis_cpu_s_per_1k'):.3f} | "
            f"{median_of(runs, 'bench_cpu_s_per_1k'):.3f} | "
            f"{median_of(runs, 'redis_cmds_per_msg'):.1f} |"
        )
    out += [
        "",
        "Per run, against (i) of the same run (throughput: higher is better; node CPU per "
        "message: lower is better):",
        "",
        "| run | throughput (i-b)/(i) | throughput (ii)/(i) | throughput (iii)/(i) | "
        "node CPU/msg (i-b)/(i) | node CPU/msg (ii)/(i) | node CPU/msg (iii)/(i) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = [f"thr_{c}" for c in VERSUS] + [f"cpu_{c}" for c in VERSUS]
    for row in s["ratios"]:
        out.append(f"| {row['run']} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    med = {k: statistics.median(r[k] for r in s["ratios"]) for k in keys}
    out.append("| median | " + " | ".join(f"{med[k]:.2f}" for k in keys) + " |")
    routes = [r["routes"] for r in results["owner"] if "routes" in r]
    if routes:
        out.append(
            f"\n(iii): routes the Client had learned after the run: "
            f"{', '.join(f'{x:.0f}' for x in routes)} of {s['entities']} entities (the "
            "entities its first node owns need none)"
        )
    extra = {c: sum(r["ran_extra"] for r in results[c]) for c, _ in CONFIGS}
    if any(extra.values()):
        out.append(f"WARNING: messages run beyond those sent: {extra}")
    print("\n".join(out), flush=True)


async def run_cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    handler = HANDLERS[args.handler]
    say(
        f"cost: {args.runs} runs x {len(CONFIGS)} configurations, {args.entities} entities x "
        f"{args.messages} {handler.message}, workdir {workdir}"
    )

    def spec(name: str, shards: int, cluster: bool, key_prefix: str) -> NodeSpec:
        return node_spec(
            name,
            server.url,
            shards,
            cluster=cluster,
            key_prefix=key_prefix,
            handlers=handler.module,
            entity_type=handler.entity_type,
            shard_heartbeat_ms=COST_SHARD_HEARTBEAT_MS,
        )

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(redis_server(workdir / "redis", aof=True))
        single = stack.enter_context(
            aqnode_serve(workdir, server.url, spec("single", args.single_shards, False, "aqsingle"))
        )
        # cluster mode alone in its group: its own key prefix, so its own group keys
        one = stack.enter_context(
            aqnode_serve(workdir, server.url, spec("one", args.single_shards, True, "aqone"))
        )
        nodes = [
            stack.enter_context(
                aqnode_serve(workdir, server.url, spec(sid, args.shards, True, KEY_PREFIX))
            )
            for sid in IDS
        ]
        for node in [single, one, *nodes]:
            await wait_ready(node)
        if await wait_agreement(nodes, 30.0) is None:
            raise RuntimeError("the three nodes did not agree on a master in 30 s")
        if await wait_agreement([one], 30.0) is None:
            raise RuntimeError("the one-member cluster did not elect itself in 30 s")
        probe = Probe(server)
        try:
            cost = Cost(args, server, single, one, nodes, probe)
            await cost.run()
        finally:
            probe.close()
    results = cost.results
    ratios = []
    for run in range(args.runs):
        base = results["single"][run]
        row: dict[str, float] = {"run": run + 1}
        for config in VERSUS:
            other = results[config][run]
            row[f"thr_{config}"] = other["msgs_per_s"] / base["msgs_per_s"]
            row[f"cpu_{config}"] = other["system_cpu_s_per_1k"] / base["system_cpu_s_per_1k"]
        ratios.append(row)
    summary = {
        "handler": args.handler,
        "message": handler.message,
        "runs": args.runs,
        "entities": args.entities,
        "messages": args.messages,
        "chunk": args.chunk,
        "shards": args.shards,
        "single_shards": args.single_shards,
        "shard_heartbeat_ms": COST_SHARD_HEARTBEAT_MS,
        "seed": args.seed,
        "machine": machine(),
        "results": results,
        "ratios": ratios,
    }
    print_cost(summary)
    return summary


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/cluster-bench",
        description="Cluster-mode benchmarks on this machine, with their own redis-server "
        "and aqnode nodes (n1, n2, n3). failover (tests.handlers.testkit handlers): "
        "kill -9 the master N times under load; time to the first successful call through "
        "a survivor against the SPEC bound (node_ttl_ms + leader_debounce_ms + 1 s), then "
        "check duplicates, lost messages and FIFO per sender. cost: CPU per message and "
        "throughput of one standalone node vs a one-member cluster and the 3-node cluster "
        "(random node per call, and the owner-aware Client), on a no-op Ping (--handler "
        "ping) or the testkit Incr. Prints Markdown tables; exits 1 if a failover check "
        "fails.",
    )
    p.add_argument(
        "--scenario",
        choices=("failover", "cost", "all"),
        default="all",
        help="which scenario (default: all, failover then cost)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="random seed: the pauses between kills, the node per call in cost (ii) "
        "(default: from the clock; printed)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON here")
    p.add_argument("--shards", type=int, default=1, help="shards per node (1)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    f = p.add_argument_group("failover")
    f.add_argument("--kills", type=int, default=20, help="kills of the master (20)")
    f.add_argument("--senders", type=int, default=3, help="senders, one Client each (3)")
    f.add_argument(
        "--lanes",
        type=int,
        default=4,
        help="concurrent lanes per sender; a lane owns a share of the entities and has one "
        "message in flight at a time (4)",
    )
    f.add_argument(
        "--failover-entities",
        dest="entities_failover",
        metavar="N",
        type=int,
        default=50,
        help="entities the senders share at any time (50)",
    )
    f.add_argument("--pause-ms", type=float, default=10.0, help="each lane's pause (10 ms)")
    f.add_argument(
        "--rotate-s",
        type=float,
        default=2.0,
        help="every S seconds each entity slot takes a fresh entity name, so that new "
        "entities keep being placed, some on the restarted node, and each kill hits "
        "entities that live on the victim; 0: the same entities throughout, which after "
        "the first kill never live on the restarted node again (2)",
    )
    f.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds of load between agreement and the next kill, x0.5 to x1.5 at random (1)",
    )
    f.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for every acknowledged message to run (120)",
    )
    c = p.add_argument_group("cost")
    c.add_argument(
        "--handler",
        choices=tuple(HANDLERS),
        default="ping",
        help="ping: bench.handlers' no-op Ping, done when the shards' handled counts reach "
        "the messages sent, so the cluster's own cost shows; incr: tests.handlers.testkit's "
        "Incr (GET, 1 ms sleep, SET, RPUSH t:ran), done when LLEN t:ran does (default ping)",
    )
    c.add_argument("--runs", type=int, default=3, help="runs of each configuration (3)")
    c.add_argument("--entities", type=int, default=1000, help="entities per run (1000)")
    c.add_argument(
        "--messages",
        type=int,
        help="messages per entity (ping 100, incr 10: runs of 3 to 8 s on 2 cores)",
    )
    c.add_argument("--chunk", type=int, default=500, help="enqueue calls per gather (500)")
    c.add_argument(
        "--single-shards",
        type=int,
        help="shards of the standalone node (i) and of the one-member cluster (i-b) "
        "(default: --shards, as each cluster node, 1)",
    )
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.single_shards is None:
        args.single_shards = args.shards
    if args.messages is None:
        args.messages = MESSAGES[args.handler]
    if min(args.kills, args.senders, args.lanes, args.entities_failover) < 1:
        p.error("--kills, --senders, --lanes and --failover-entities must be >= 1")
    if args.rotate_s < 0:
        p.error("--rotate-s must be >= 0")
    if (
        min(args.runs, args.entities, args.messages, args.chunk, args.shards, args.single_shards)
        < 1
    ):
        p.error("--runs, --entities, --messages, --chunk, --shards, --single-shards must be >= 1")
    return args


async def main_async(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    passed = True
    if args.scenario in ("failover", "all"):
        fargs = argparse.Namespace(**{**vars(args), "entities": args.entities_failover})
        out["failover"] = await run_failover(fargs, workdir / "failover")
        passed = out["failover"]["passed"]
    if args.scenario in ("cost", "all"):
        out["cost"] = await run_cost(args, workdir / "cost")
    return out, passed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aqnode-cluster-bench-"))
    limit = 0.0
    if args.scenario in ("failover", "all"):
        limit += 120 + args.kills * 60 + args.settle_timeout + STOP_GRACE_S
    if args.scenario in ("cost", "all"):
        limit += 120 + args.runs * len(CONFIGS) * 120
    finished = threading.Event()

    def watchdog() -> None:
        if not finished.wait(limit):
            print(
                f"cluster-bench: hard time limit ({limit:.0f}s) reached; exiting "
                f"(workdir {workdir}; the nodes and Redis die with this process)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(3)

    threading.Thread(target=watchdog, name="cluster-bench-watchdog", daemon=True).start()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    passed = False
    try:
        results, passed = asyncio.run(main_async(args, workdir))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    except RuntimeError as exc:
        print(f"cluster-bench: {exc}", file=sys.stderr)
        return 2
    finally:
        finished.set()
        if passed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"cluster-bench: working directory kept: {workdir}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
