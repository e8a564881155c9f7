"""A cluster crash storm: ``scripts/soak --cluster [--faults N] [--seed S] [--json FILE]``.

Issue 9's soak. It starts its own ``redis-server`` (a free TCP port on 127.0.0.1, a
temporary directory, ``appendonly yes``, ``appendfsync everysec``), one helper process
holding three TCP proxies in front of it (``tests/tcp_proxy.py``), and three ``aqnode
serve`` nodes ``n1``, ``n2``, ``n3`` in cluster mode (``heartbeat_ms`` 400, ``node_ttl_ms``
1500, ``leader_debounce_ms`` 800, as ``scripts/cluster-bench``; ``--shards`` shards each),
each node's Redis connection through its own proxy, so that a proxy cut partitions
exactly one node from Redis. The nodes serve this module's ``Stint`` handler (entity type
``soak``). Senders (``--senders``, each with ``--lanes`` lanes; a lane has one message in
flight and owns a share of the entities, so each sender's order per entity is the order
acknowledged) send ``Stint`` over ``--entities`` fixed entities and ``--rotating`` slots
whose entity names change every ``--rotate-s`` seconds (so that new entities keep being
placed, also on a node restarted last, and every fault finds work on its victim). All
senders share the entities; they come in three kinds, in turn:

- ``owner``: one ``Client`` given all three addresses (owner-aware routing); a failed call
  is resent under the same ``message_id`` until it is acknowledged;
- ``random``: one ``Client(address, follow_owners=False)`` per node, each call (and each
  resend, under the same ``message_id``) to a node drawn at random: forwarding;
- ``once``: one ``Client`` given all three addresses, client-chosen ids, one attempt per
  message (refusals are counted; a message whose call failed may have landed anyway).

Meanwhile ``--faults`` faults, drawn at random from ``--seed``, one after the other:

- ``node-kill``: ``kill -9`` of a replica's process group (supervisor and shards), down
  for one of: ``quick`` 0.2 to 1.5 s (the restart is usually back before its membership
  lapses: it takes its own place back, no adoption), ``lapsed`` 1 to 2.5 s past
  ``node_ttl_ms`` + ``leader_debounce_ms`` (declared dead, its log adopted), or ``left
  dead`` 3 x ``node_ttl_ms`` to 8 s (the survivors serve alone a while), one time in
  three each; then it is started again;
- ``master-kill``: the same for the master (quick 30 %, lapsed 45 %, left dead 25 %: a
  change of master and its epoch);
- ``shard-kill``: ``kill -9`` of one shard of a random node; its supervisor restarts it;
- ``pause``: ``SIGSTOP`` of every process of a random node for 2.5 to 3.5 x
  ``node_ttl_ms``, then ``SIGCONT``; the node, declared dead meanwhile, is expected to
  exit 1 saying so; it is then started again;
- ``redis-cut``: that node's proxy black-holes its Redis traffic for 2 to 4 x
  ``node_ttl_ms`` (one time in five: 0.3 to 0.7 x, within the lease), then relays again;
  a node declared dead exits 1 and is started again, one that was not carries on.

After each fault the soak waits until all three nodes are up and agree on one master and
epoch with three live members, then for liveness: ``--progress`` new acknowledgements and
as many new executions within 30 s (else the storm stops: more faults would hide a
stall); then it runs the ledger checks on everything so far, prints them on the fault's
line, and pauses ``--pause-min`` to ``--pause-max`` seconds under load.

``Stint`` writes one line when its handler starts (``S``: time, process, node, pid,
entity, sender, seq, message id, attempt, fencing token), sleeps ``--handler-ms`` (5 ms;
``--long-share`` of the messages, 5 %, ``--long-ms``, 100 ms, so that pauses and cuts
catch handlers in the middle), and writes a line when it ends (``E``), or when
something is thrown into it (``X``, e.g. the node's ``LeaseOver``), to a file per shard
process (one ``write(2)`` per line, ``O_APPEND``: survives kill -9, needs no Redis).
The checks (the single-node soak's, ``bench/soak.py``, for duplicates, FIFO and dead
letters):

- duplicates: a message id that started more than once;
- overlaps: two executions of one entity at once, on any processes of any nodes: one
  starts before the other's ``E`` (an execution without ``E`` was ended by a kill or
  thrown out; nothing of its body ran after its ``S`` line, so it counts as that point);
- FIFO breaks: per entity and sender, acknowledged messages that started out of seq order
  (breaks involving a message whose call failed are counted apart, as in bench/soak.py);
- lost: acknowledged, neither started nor dead-lettered (with its state in every log);
- ran after dead-lettered: an ``S`` line later than its dead letter's
  ``dead_lettered_at``;
- started while fenced: a paused or cut-off node started a handler more than
  ``node_ttl_ms`` after its pause or cut began (its lease was over), before it was back,
  or ever again in the processes of that run if the group declared it dead;
- fencing tokens: an entity's ``ctx.fencing_token`` went down, or stayed the same from
  one execution to the next on another node.

At the end the senders stop (in-flight resends get 60 s), the soak waits until every
acknowledged message started or is dead-lettered and no node has a live message
(``--settle-timeout``), runs the checks a last time and prints a summary: counts, checks,
dead letters by reason, faults by kind with their outcomes, and how long it ran
(``--json FILE`` writes it all, with the fault log). Exit 1 if a check fails, a stall
stopped the storm or it did not settle; 2 for a set-up failure; 3 when the hard time
limit killed it. Every process it starts gets PR_SET_PDEATHSIG and is stopped on the way
out (a paused node is continued first); traffic stays on 127.0.0.1. The working directory
(node logs in ``node-n<i>/node.log``, execution records in ``records/``) is removed unless
``--keep`` or a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from aqnode import Command, Context, entity_type, handles
from aqnode.client import Client, NodeStatus
from aqnode.errors import AqError
from aqnode.wal.dlq import DeadLetter, DeadLetterQueue
from aqnode.wal.keys import LogKeys, nodes_key
from bench.cluster import (
    HEARTBEAT_MS,
    IDS,
    KEY_PREFIX,
    LEADER_DEBOUNCE_MS,
    NODE_TTL_MS,
    kill_group,
    log_errors,
    machine,
    max_gap,
    node_spec,
    node_status,
    text,
    texts,
    wait_agreement,
    wait_up,
)
from bench.procs import ROOT, NodeProc, aqnode_serve, die_with_us, redis_server, tail
from bench.soak import (
    Fault,
    Row,
    blank,
    dead_letter_figures,
    duplicate_ids,
    fifo_breaks,
)

# ---- the handler the nodes run (imported by their shards) -------------------------------

ENTITY_TYPE = "soak"


@entity_type(ENTITY_TYPE, id_field="name")
class Stint(Command[None]):
    """One execution: an ``S`` line as the handler starts, ``ms`` of awaited sleep, then
    an ``E`` line (or ``X`` if something was thrown into it)."""

    name: str
    sender: str
    seq: int
    ms: int = 5


_record_fd: int | None = None
_proc_token = ""


def _record(line: str) -> None:
    os.write(_record_fd or _open_record(), line.encode())  # one write(2): atomic, O_APPEND


def _open_record() -> int:
    global _record_fd, _proc_token
    if _record_fd is None:
        _proc_token = os.urandom(4).hex()  # pids are reused; this names the process
        path = Path(os.environ["AQ_SOAK_RECORD_DIR"]) / f"exec-{os.getpid()}-{_proc_token}.log"
        _record_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return _record_fd


@handles(Stint)
async def stint(msg: Stint, ctx: Context) -> None:
    _open_record()
    node = os.environ.get("AQ_SOAK_NODE", "?")
    mid = ctx.message_id
    _record(
        f"S {time.time():.6f} {_proc_token} {node} {os.getpid()} {msg.name} {msg.sender} "
        f"{msg.seq} {mid} {ctx.attempt} {ctx.fencing_token}\n"
    )
    try:
        await asyncio.sleep(msg.ms / 1000)
    except BaseException as exc:
        _record(f"X {time.time():.6f} {_proc_token} {mid} {type(exc).__name__}\n")
        raise
    _record(f"E {time.time():.6f} {_proc_token} {mid}\n")


# ---- constants ----------------------------------------------------------------------------

KINDS = ("node-kill", "master-kill", "shard-kill", "pause", "redis-cut")
TTL_S = NODE_TTL_MS / 1000
LEASE_MARGIN_S = 0.05  #: a lease ends at most node_ttl_ms after the pause or cut; slack
PROGRESS_TIMEOUT_S = 30.0  #: liveness after each fault
AGREE_TIMEOUT_S = 30.0  #: all three up and agreed after each fault
EXIT_WAIT_S = 20.0  #: a node paused or cut past its lease has this long to exit
RESTART_ATTEMPTS = 10  #: a restart refused (its server_id still a live member) is retried
SHARD_BACK_S = 30.0
STOP_GRACE_S = 60.0  #: in-flight resends get this long at the end
STUCK_S = 30.0  #: a message unacknowledged this long is reported (and still resent)
SETTLE_IDLE_S = 45.0  #: settling gives up when nothing changed this long
OVERDUE_S = 60.0  #: incremental checks: acknowledged this long ago, not run nor dead
MODES = ("owner", "random", "once")
DOWN_TIERS = ("quick", "lapsed", "left dead")  #: how long a killed node stays down
FENCED_EXIT = "declared this node dead"  #: what a node says when it exits fenced


def say(start: float, text: str) -> None:
    print(f"[{time.monotonic() - start:7.1f}s] {text}", file=sys.stderr, flush=True)


# ---- the Redis proxies: one helper process, three proxies --------------------------------


def proxy_main() -> None:
    """The helper process: ``python -c '...proxy_main()' TARGET_PORT N``. Prints the N
    proxy ports, then obeys one command a line on stdin (``cut I``, ``restore I``, ``guard
    PGID``, ``unguard PGID``), answering ``ok``. When stdin closes or SIGTERM comes (the
    soak died), guarded process groups (a node paused at that moment) get SIGCONT and
    SIGKILL, so that no stopped process outlives the soak."""
    import uvloop  # the proxies' loops: fewer CPU cycles per relayed byte

    from tests.tcp_proxy import TcpProxy

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    target_port, count = int(sys.argv[1]), int(sys.argv[2])
    proxies = [TcpProxy("127.0.0.1", target_port) for _ in range(count)]
    guarded: set[int] = set()

    def reap() -> None:
        for pgid in guarded:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, sig)

    def on_term(_signum: int, _frame: Any) -> None:
        reap()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(" ".join(str(p.port) for p in proxies), flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "cut":
            proxies[int(arg)].cut()
        elif command == "restore":
            proxies[int(arg)].restore()
        elif command == "guard":
            guarded.add(int(arg))
        elif command == "unguard":
            guarded.discard(int(arg))
        print("ok", flush=True)
    reap()
    os._exit(0)


class Proxies:
    """The helper process from the soak's side."""

    def __init__(self, target_port: int, count: int) -> None:
        launch = die_with_us()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [
                *launch.prefix,
                sys.executable,
                "-c",
                "from bench.cluster_soak import proxy_main; proxy_main()",
                str(target_port),
                str(count),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=launch.preexec_fn,
        )
        self.stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        self.stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        first = self.stdout.readline().split()
        if len(first) != count:
            raise RuntimeError(f"the proxy helper did not start (said {first!r})")
        self.ports = [int(p) for p in first]
        self.lock = threading.Lock()

    def url(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.ports[index]}/0"

    def command(self, text: str) -> None:
        with self.lock:
            self.stdin.write(text + "\n")
            self.stdin.flush()
            if self.stdout.readline().strip() != "ok":
                raise RuntimeError(f"the proxy helper did not obey {text!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def proxies(target_port: int, count: int) -> Iterator[Proxies]:
    helper = Proxies(target_port, count)
    try:
        yield helper
    finally:
        helper.close()


# ---- what ran -------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One execution, from its ``S`` line (and its ``E`` or ``X`` line, if any)."""

    ts: float
    proc: str
    node: str
    pid: int
    entity: str
    sender: str
    seq: int
    mid: str
    attempt: int
    token: int
    end: float | None = None
    thrown: float | None = None
    thrown_what: str = ""
    row: Row | None = None  #: bench.soak's view of it, for its checks

    def __post_init__(self) -> None:
        self.row = Row(self.ts, self.pid, self.entity, self.sender, self.seq, self.mid)

    def show(self) -> str:
        end = f"{self.end:.6f}" if self.end is not None else "-"
        if self.thrown is not None:
            end = f"thrown {self.thrown_what} at {self.thrown:.6f}"
        return (
            f"{self.mid} on {self.node} pid {self.pid} ({self.proc}) {self.ts:.6f}..{end} "
            f"attempt {self.attempt} token {self.token}"
        )


class Executions:
    """The record files, read incrementally (whole lines only); thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.offsets: dict[Path, int] = {}
        self.runs: list[Run] = []
        self.open: dict[tuple[str, str], Run] = {}  #: (process, message id) -> its run
        self.bad_lines = 0
        self.orphan_ends = 0  #: E / X lines without an S line before them
        self.ends = 0
        self.thrown = 0
        self.lock = threading.Lock()

    def refresh(self) -> list[Run]:
        with self.lock:
            for path in sorted(self.dir.glob("exec-*.log")):
                with path.open("rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
                end = data.rfind(b"\n") + 1
                self.offsets[path] = self.offsets.get(path, 0) + end
                for line in data[:end].decode(errors="replace").splitlines():
                    self._line(line.split())
            return list(self.runs)

    def _line(self, parts: list[str]) -> None:
        try:
            if parts[0] == "S" and len(parts) == 11:
                _, ts, proc, node, pid, entity, sender, seq, mid, attempt, token = parts
                run = Run(
                    float(ts), proc, node, int(pid), entity, sender, int(seq), mid,
                    int(attempt), int(token),
                )  # fmt: skip
                self.runs.append(run)
                self.open[(proc, mid)] = run
                return
            if parts[0] in ("E", "X") and len(parts) >= 4:
                found = self.open.pop((parts[2], parts[3]), None)
                if found is None:
                    self.orphan_ends += 1
                elif parts[0] == "E":
                    found.end = float(parts[1])
                    self.ends += 1
                else:
                    found.thrown = float(parts[1])
                    found.thrown_what = parts[4] if len(parts) > 4 else "?"
                    self.thrown += 1
                return
        except (ValueError, IndexError):
            pass
        self.bad_lines += 1


# ---- the load --------------------------------------------------------------------------------


@dataclass
class Load:
    """Senders on the soak's event loop; see the module docstring for their kinds."""

    addresses: list[str]
    args: argparse.Namespace
    acked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> e, s, seq
    acked_at: dict[str, float] = field(default_factory=dict)  # id -> time.time()
    ack_times: list[float] = field(default_factory=list)  # time.monotonic()
    acked_by_mode: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # "once" senders: code -> count
    resent: Counter[str] = field(default_factory=Counter)  # resending senders: code -> n
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (code, text) -> n
    stuck: list[str] = field(default_factory=list)
    unacked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # gave up at stop
    id_mismatches: int = 0
    backlog_waits: int = 0
    executed: int = 0  #: S lines seen (the storm keeps it up to date): for the backlog cap

    def __post_init__(self) -> None:
        self.rng = random.Random(self.args.seed + 1)
        self.stopping = asyncio.Event()
        self.give_up = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.t0 = time.monotonic()

    def mode(self, index: int) -> str:
        return MODES[index % len(MODES)]

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._sender(i)) for i in range(self.args.senders)]

    async def stop(self) -> None:
        self.stopping.set()
        _, pending = await asyncio.wait(self.tasks, timeout=STOP_GRACE_S)
        if pending:
            self.give_up.set()
            await asyncio.wait(pending, timeout=15)
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a sender failed: {task.exception()!r}")

    def entity(self, slot: int) -> str:
        if slot < self.args.entities:
            return f"f{slot}"
        generation = int((time.monotonic() - self.t0) // self.args.rotate_s)
        return f"r{slot - self.args.entities}g{generation}"

    async def _sender(self, index: int) -> None:
        name, mode = f"s{index}", self.mode(index)
        slots = list(range(self.args.entities + self.args.rotating))
        async with contextlib.AsyncExitStack() as stack:
            if mode == "random":
                clients = [
                    await stack.enter_async_context(Client(a, follow_owners=False))
                    for a in self.addresses
                ]
            else:
                clients = [await stack.enter_async_context(Client(self.addresses))]
            await asyncio.gather(
                *(
                    self._lane(clients, name, mode, slots[lane :: self.args.lanes])
                    for lane in range(self.args.lanes)
                )
            )

    async def _lane(self, clients: list[Client], sender: str, mode: str, slots: list[int]) -> None:
        if not slots:
            return
        seqs: Counter[str] = Counter()
        for slot in itertools.cycle(slots):
            while len(self.acked) - self.executed > self.args.max_backlog:
                if self.stopping.is_set():
                    return
                self.backlog_waits += 1
                await asyncio.sleep(0.05)
            if self.stopping.is_set():
                return
            entity = self.entity(slot)
            seq = seqs[entity]
            seqs[entity] = seq + 1
            long = self.rng.random() < self.args.long_share
            ms = self.args.long_ms if long else self.args.handler_ms
            msg = Stint(name=entity, sender=sender, seq=seq, ms=ms)
            if mode == "once":
                await self._once(clients[0], msg, mode)
            else:
                await self._deliver(clients, msg, mode)
            await asyncio.sleep(self.args.pause_ms / 1000)

    def _ack(self, mid: str, msg: Stint, mode: str) -> None:
        self.acked[mid] = (msg.name, msg.sender, msg.seq)
        self.acked_at[mid] = time.time()
        self.ack_times.append(time.monotonic())
        self.acked_by_mode[mode] += 1

    async def _once(self, bus: Client, msg: Stint, mode: str) -> None:
        self.sent += 1
        try:
            mid = await bus.enqueue(msg)
        except AqError as exc:
            self.refused[exc.code] += 1
            self.messages[(exc.code, blank(exc.message))] += 1
            await asyncio.sleep(0.02)
        except Exception as exc:  # a client bug: counted, the sender goes on
            code = f"exception:{type(exc).__name__}"
            self.refused[code] += 1
            self.messages[(code, blank(str(exc)))] += 1
            await asyncio.sleep(0.02)
        else:
            self._ack(mid, msg, mode)

    async def _deliver(self, clients: list[Client], msg: Stint, mode: str) -> None:
        mid = f"{msg.sender}-{msg.name}-{msg.seq}"
        first, delay, reported = time.monotonic(), 0.02, False
        self.sent += 1
        while True:
            bus = clients[0] if len(clients) == 1 else self.rng.choice(clients)
            try:
                got = await bus.enqueue(msg, message_id=mid)
            except AqError as exc:
                code = exc.code
                self.messages[(code, blank(exc.message))] += 1
            except Exception as exc:  # a client bug: counted, and resent like a failure
                code = f"exception:{type(exc).__name__}"
                self.messages[(code, blank(str(exc)))] += 1
            else:
                if got != mid:
                    self.id_mismatches += 1
                self._ack(mid, msg, mode)
                return
            self.resent[code] += 1
            if not reported and time.monotonic() - first > STUCK_S:
                reported = True
                self.stuck.append(f"{mid}: not acknowledged after {STUCK_S:.0f}s (last {code})")
            if self.give_up.is_set():
                self.unacked[mid] = (msg.name, msg.sender, msg.seq)
                return
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 2)


# ---- faults -----------------------------------------------------------------------------------


@dataclass
class ClusterFault(Fault):
    """bench.soak's Fault (``started``/``ended`` wall clock) and what a cluster adds."""

    node: str = ""
    outcome: str = ""
    exit_code: int | None = None
    down_s: float = 0.0  #: killed / paused / cut for this long
    acks_while_down: int = 0
    restart_attempts: int = 0
    agreed_s: float | None = None  #: from the end of the fault to agreement of all three
    epoch_before: int = 0
    epoch_after: int = 0
    master_before: str = ""
    checks: dict[str, int] = field(default_factory=dict)  #: the ledger after this fault
    mono_started: float = 0.0


@dataclass
class FenceWindow:
    """A node paused or cut off: none of its handlers may start in (since, until], nor in
    its processes of that run after ``since`` if the group declared it dead."""

    fault: int
    node: str
    pids: list[int]
    since: float
    until: float
    declared_dead: bool


class Stall(Exception):
    """The group did not come back or made no progress: the storm ends."""


class Storm:
    def __init__(
        self,
        args: argparse.Namespace,
        nodes: list[NodeProc],
        helper: Proxies,
        store: redis.Redis,
        records: Executions,
    ) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.nodes = nodes
        self.by_id = {n.spec.server_id: n for n in nodes}
        self.helper = helper
        self.store = store
        self.records = records
        self.load: Load | None = None
        self.faults: list[ClusterFault] = []
        self.windows: list[FenceWindow] = []
        self.findings: list[str] = []
        self.faulting: set[str] = set()  #: nodes a fault has in hand (expected to be down)
        self.paused: set[int] = set()  #: process groups stopped right now
        self.unexpected_exits = 0
        self.stalled = False
        self.first_violation: dict[str, int] = {}  #: check -> the fault it showed after
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        say(self.t0, text)

    # -- helpers ------------------------------------------------------------------------

    def acks(self) -> int:
        return len(self.load.acked) if self.load else 0

    def executed(self) -> int:
        runs = len(self.records.refresh())
        if self.load is not None:
            self.load.executed = runs
        return runs

    async def feed(self) -> None:
        """Keeps the load's view of executions current (its backlog cap)."""
        while True:
            await asyncio.to_thread(self.executed)
            await asyncio.sleep(0.5)

    async def tick(self) -> None:
        """A node that exited while no fault had it in hand is a finding: start it again."""
        for node in self.nodes:
            sid = node.spec.server_id
            if sid in self.faulting or node.proc.poll() is None:
                continue
            self.unexpected_exits += 1
            why = tail(node.log_path, 3).replace("\n", " | ")
            self.findings.append(f"{sid} exited by itself with {node.proc.returncode}: {why}")
            self.say(f"!! {sid} exited by itself ({node.proc.returncode}); restarting")
            self.faulting.add(sid)
            try:
                await self.restart(node)
            finally:
                self.faulting.discard(sid)

    async def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.tick()
            await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))

    async def status(self) -> NodeStatus:
        """The status of a live node that knows its master."""
        deadline = time.monotonic() + AGREE_TIMEOUT_S
        while True:
            for node in self.rng.sample(self.nodes, len(self.nodes)):
                if node.spec.server_id in self.faulting or node.proc.poll() is not None:
                    continue
                st = await node_status(node.address, 2.0)
                if st is not None and st.master:
                    return st
            if time.monotonic() > deadline:
                raise Stall("no node answered status with a master")
            await asyncio.sleep(0.1)

    async def restart(self, node: NodeProc) -> int:
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            node.respawn()
            try:
                up = await wait_up(node)
            except RuntimeError as exc:  # not ready in 60 s
                raise Stall(str(exc)[-600:]) from None
            if up:
                return attempt
            self.say(
                f"  {node.spec.server_id} exited at start ({node.proc.returncode}), attempt "
                f"{attempt}: {tail(node.log_path, 1)}"
            )
            await asyncio.sleep(0.5)
        raise Stall(f"{node.spec.server_id} did not restart in {RESTART_ATTEMPTS} attempts")

    async def agree(self, fault: ClusterFault) -> None:
        began = time.monotonic()
        agreed = await wait_agreement(self.nodes, AGREE_TIMEOUT_S)
        if agreed is None:
            raise Stall(
                f"the nodes did not agree on one master and epoch with three live members "
                f"within {AGREE_TIMEOUT_S:.0f}s"
            )
        fault.agreed_s = time.monotonic() - began
        fault.epoch_after = agreed[1]

    async def progress(self, count: int) -> bool:
        """``count`` new acknowledgements and as many new executions."""
        acks, runs = self.acks() + count, self.executed() + count
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while self.acks() < acks or self.executed() < runs:
            if time.monotonic() > deadline:
                return False
            await self.tick()
            await asyncio.sleep(0.05)
        return True

    def stop_group(self, node: NodeProc) -> list[int]:
        pids = node.pids()
        pgid = node.proc.pid
        self.helper.command(f"guard {pgid}")
        self.paused.add(pgid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGSTOP)
        for pid in pids[1:]:  # a shard that left the group (it should not have)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def cont_group(self, node: NodeProc, pids: Sequence[int]) -> None:
        pgid = node.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGCONT)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
        self.paused.discard(pgid)
        with contextlib.suppress(RuntimeError, OSError):
            self.helper.command(f"unguard {pgid}")

    def cont_all(self) -> None:
        for pgid in list(self.paused):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGCONT)
        self.paused.clear()

    async def wait_exit(self, node: NodeProc, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = node.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        return None

    # -- the storm --------------------------------------------------------------------------

    async def run(self, load: Load, deadline: float) -> None:
        self.load = load
        feeder = asyncio.create_task(self.feed())
        try:
            if not await self.progress(self.args.progress * 4):
                raise Stall("the load made no progress before the first fault")
            for i in range(1, self.args.faults + 1):
                if time.monotonic() > deadline:
                    self.findings.append(
                        f"time bound: stopped after {i - 1} of {self.args.faults} faults"
                    )
                    self.say("time bound reached: no more faults")
                    break
                await self.one(i)
                await self.idle(self.rng.uniform(self.args.pause_min, self.args.pause_max))
        except Stall as exc:
            self.stalled = True
            self.findings.append(f"storm stopped: {exc}")
            self.say(f"!! {exc}; no more faults")
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def one(self, index: int) -> None:
        kind = self.rng.choice(self.args.kinds)
        st = await self.status()
        fault = ClusterFault(index, kind, time.time(), epoch_before=st.epoch)
        fault.master_before = st.master
        fault.mono_started = time.monotonic()
        acks_before = self.acks()
        try:
            await getattr(self, "_" + kind.replace("-", "_"))(fault, st)
        except Stall as exc:
            fault.outcome = f"STALL: {exc}"
            self.faults.append(fault)
            raise
        finally:
            fault.recovery_s = time.monotonic() - fault.mono_started
            fault.ended = time.time()
        fault.progressed = await self.progress(self.args.progress)
        fault.max_ack_gap_s = max_gap(
            self.load.ack_times if self.load else [], fault.mono_started, time.monotonic()
        )
        self.faults.append(fault)
        checks = await asyncio.to_thread(self.ledger, False)
        fault.checks = {k: checks[k] for k in (*CHECKS, "overdue")}
        bad = [k for k in CHECKS if checks[k]]
        for k in bad:
            self.first_violation.setdefault(k, index)
        mark = "ok" if not bad else "VIOLATION " + ", ".join(f"{k} {checks[k]}" for k in bad)
        self.say(
            f"fault {index}/{self.args.faults} {kind} {fault.node}: {fault.detail}; "
            f"{fault.outcome}; back in {fault.recovery_s:.1f}s, epoch {fault.epoch_before}->"
            f"{fault.epoch_after}; acked {self.acks()} (+{self.acks() - acks_before}), longest "
            f"ack gap {fault.max_ack_gap_s:.2f}s; checks {mark}"
            + (f", overdue {checks['overdue']}" if checks["overdue"] else "")
            + ("" if fault.progressed else " (NO PROGRESS)")
        )
        if not fault.progressed:
            raise Stall(
                f"fault {index} ({kind} {fault.node}): fewer than {self.args.progress} new acks "
                f"and executions in {PROGRESS_TIMEOUT_S:.0f}s after the group agreed again"
            )

    async def _kill(self, fault: ClusterFault, node: NodeProc, weights: Sequence[float]) -> None:
        sid = node.spec.server_id
        fault.node = sid
        self.faulting.add(sid)
        try:
            fault.victim_pid = node.proc.pid
            fault.started = time.time()
            killed = kill_group(node)
            acks = self.acks()
            tier = self.rng.choices(DOWN_TIERS, weights)[0]
            if tier == "quick":
                down = self.rng.uniform(0.2, 1.5)
            elif tier == "lapsed":
                down = TTL_S + LEADER_DEBOUNCE_MS / 1000 + self.rng.uniform(1.0, 2.5)
            else:
                down = self.rng.uniform(3 * TTL_S, 8.0)
            await self.idle(max(0.0, down - (time.monotonic() - killed)))
            fault.down_s = time.monotonic() - killed
            fault.acks_while_down = self.acks() - acks
            fault.restart_attempts = await self.restart(node)
            fault.detail = (
                f"kill -9 pid {fault.victim_pid}, {tier}: down {fault.down_s:.1f}s "
                f"({fault.acks_while_down} acks meanwhile)"
            )
            fault.outcome = f"{tier}, restarted ({fault.restart_attempts} attempt(s))"
        finally:
            self.faulting.discard(sid)
        await self.agree(fault)

    async def _node_kill(self, fault: ClusterFault, st: NodeStatus) -> None:
        replicas = [n for n in self.nodes if n.spec.server_id != st.master]
        await self._kill(fault, self.rng.choice(replicas), (1, 1, 1))

    async def _master_kill(self, fault: ClusterFault, st: NodeStatus) -> None:
        await self._kill(fault, self.by_id[st.master], (0.30, 0.45, 0.25))

    async def _shard_kill(self, fault: ClusterFault, st: NodeStatus) -> None:
        node = self.rng.choice(self.nodes)
        fault.node = node.spec.server_id
        index = self.rng.randrange(self.args.shards)
        mine = await node_status(node.address, 5.0)
        if mine is None or not mine.shards[index].alive or not mine.shards[index].pid:
            raise Stall(f"{fault.node} did not report shard {index} alive")
        victim = mine.shards[index].pid
        fault.victim_pid = victim
        fault.started = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + SHARD_BACK_S
        while True:
            now = await node_status(node.address, 2.0)
            if now is not None and now.shards[index].alive and now.shards[index].pid != victim:
                fault.detail = f"shard {index} pid {victim} -> {now.shards[index].pid}"
                fault.outcome = "shard restarted"
                break
            if time.monotonic() > deadline:
                raise Stall(f"{fault.node} shard {index} not restarted in {SHARD_BACK_S:.0f}s")
            await self.tick()
            await asyncio.sleep(0.05)
        await self.agree(fault)

    async def _pause(self, fault: ClusterFault, st: NodeStatus) -> None:
        node = self.rng.choice(self.nodes)
        seconds = self.rng.uniform(2.5, 3.5) * TTL_S

        def begin() -> list[int]:
            return self.stop_group(node)

        def end(pids: list[int]) -> None:
            self.cont_group(node, pids)

        await self._isolate(fault, node, seconds, begin, end, f"SIGSTOP {seconds:.1f}s")

    async def _redis_cut(self, fault: ClusterFault, st: NodeStatus) -> None:
        node = self.rng.choice(self.nodes)
        within = self.rng.random() < 0.2
        seconds = self.rng.uniform(0.3, 0.7) * TTL_S if within else self.rng.uniform(2, 4) * TTL_S
        index = self.nodes.index(node)

        def begin() -> list[int]:
            pids = node.pids()
            self.helper.command(f"cut {index}")
            return pids

        def end(_pids: list[int]) -> None:
            self.helper.command(f"restore {index}")

        await self._isolate(fault, node, seconds, begin, end, f"Redis cut {seconds:.1f}s")

    async def _isolate(
        self,
        fault: ClusterFault,
        node: NodeProc,
        seconds: float,
        begin: Callable[[], list[int]],
        end: Callable[[list[int]], None],
        what: str,
    ) -> None:
        """A pause or a cut: the node comes back either fenced (it exits 1 saying so; it
        is started again) or, when the group did not declare it dead, as a member."""
        sid = node.spec.server_id
        fault.node = sid
        self.faulting.add(sid)
        offset = node.log_path.stat().st_size if node.log_path.exists() else 0
        window: FenceWindow | None = None
        try:
            fault.victim_pid = node.proc.pid
            fault.started = time.time()
            began = time.monotonic()
            pids = begin()
            isolated = time.time()  #: the pause / cut is in place (its lease ends by ttl)
            acks = self.acks()
            try:
                await asyncio.sleep(seconds)
            finally:
                end(pids)
            healed = time.time()
            fault.down_s = time.monotonic() - began
            fault.acks_while_down = self.acks() - acks
            fault.detail = f"{what} ({fault.acks_while_down} acks meanwhile)"
            window = FenceWindow(
                fault.index, sid, pids, isolated + TTL_S + LEASE_MARGIN_S, healed, False
            )
            code = await self.wait_exit(node, EXIT_WAIT_S if seconds > TTL_S else 2.0)
            fault.exit_code = code
            if code is None:
                fault.outcome = "carried on (not declared dead)"
            else:
                said = _read_from(node.log_path, offset)
                window.declared_dead = FENCED_EXIT in said
                window.until = time.time()
                if code != 1 or not window.declared_dead:
                    last = said.strip().splitlines()[-1:] or ["(nothing)"]
                    self.findings.append(
                        f"fault {fault.index} ({fault.kind} {sid}): exited {code} "
                        f"{'saying it was declared dead' if window.declared_dead else ''}"
                        f"(last line: {last[0][:200]})"
                    )
                fault.restart_attempts = await self.restart(node)
                fault.outcome = (
                    f"exited {code}"
                    + (" (declared dead)" if window.declared_dead else " (NOT saying fenced)")
                    + f", restarted ({fault.restart_attempts} attempt(s))"
                )
        finally:
            if window is not None:
                self.windows.append(window)
            self.faulting.discard(sid)
        await self.agree(fault)

    # -- the ledger ---------------------------------------------------------------------------

    def ledger(self, final: bool) -> dict[str, Any]:
        assert self.load is not None
        return ledger(
            self.records.refresh(),
            dict(self.load.acked),
            dict(self.load.acked_at),
            DeadLetterQueue(self.store, KEY_PREFIX).entries(),
            list(self.faults),
            list(self.windows),
            self.store if final else None,
        )

    async def settle(self) -> tuple[bool, int]:
        """Wait until every acknowledged id started or is dead-lettered and no node has a
        live message."""
        assert self.load is not None
        deadline = time.monotonic() + self.args.settle_timeout
        last, changed, live = None, time.monotonic(), -1
        dlq = DeadLetterQueue(self.store, KEY_PREFIX)
        while True:
            await self.tick()
            runs = await asyncio.to_thread(self.records.refresh)
            ran = {r.mid for r in runs}
            dead = {d.id for d in await asyncio.to_thread(dlq.entries)}
            missing = sum(1 for mid in self.load.acked if mid not in ran and mid not in dead)
            seen = await asyncio.gather(*(node_status(n.address, 5.0) for n in self.nodes))
            live = sum(s.live_messages for s in seen if s) if all(seen) else -1
            if missing == 0 and live == 0:
                return True, live
            now = (len(runs), len(dead), missing, live)
            if now != last:
                last, changed = now, time.monotonic()
            idle = time.monotonic() - changed
            if time.monotonic() > deadline or idle > SETTLE_IDLE_S:
                why = f"nothing changed for {idle:.0f}s" if idle > SETTLE_IDLE_S else "timeout"
                self.findings.append(
                    f"not settled ({why}): {missing} acknowledged ids neither started nor were "
                    f"dead-lettered, {live} live messages (-1: a node did not answer)"
                )
                return False, live
            await asyncio.sleep(0.5)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


# ---- checks ----------------------------------------------------------------------------------

CHECKS = (
    "duplicates",
    "overlaps",
    "fifo_breaks",
    "lost",
    "ran_after_dead_lettered",
    "started_while_fenced",
    "token_regressions",
)


def find_overlaps(runs: Sequence[Run]) -> tuple[list[str], dict[str, Any]]:
    """Per entity, by start time: an execution that starts before an earlier one ended
    (its ``E`` line; one without ``E`` ran nothing after its ``S`` line)."""
    by_entity: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_entity[r.entity].append(r)
    found: list[str] = []
    thrown_late = 0  #: thrown out after another execution of the entity had started
    moves = 0
    for entity, ers in by_entity.items():
        ers.sort(key=lambda r: r.ts)
        holder: Run | None = None
        busy_until = -math.inf
        for r in ers:
            if holder is not None and r.ts < busy_until:
                found.append(f"{entity}: {r.show()} started while {holder.show()} ran")
            if holder is not None and holder.node != r.node:
                moves += 1
            end = r.end if r.end is not None else r.ts
            if end >= busy_until:
                holder, busy_until = r, end
        for a, b in itertools.pairwise(ers):
            if a.thrown is not None and a.thrown > b.ts:
                thrown_late += 1
    return found, {"thrown_after_entity_ran_elsewhere": thrown_late, "entity_moves": moves}


def fenced_starts(runs: Sequence[Run], windows: Sequence[FenceWindow]) -> list[str]:
    """Executions a paused or cut-off node started once its lease was over: before it was
    back, or (declared dead) in its processes of that run ever after (``runs`` sorted by
    time; an old process is looked for up to a minute after the node was back)."""
    by_node: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_node[r.node].append(r)
    starts = {node: [r.ts for r in rs] for node, rs in by_node.items()}
    found = []
    for w in windows:
        mine, ts = by_node.get(w.node, []), starts.get(w.node, [])
        pids = set(w.pids)
        horizon = w.until + 60.0 if w.declared_dead else w.until
        for r in mine[bisect.bisect_right(ts, w.since) : bisect.bisect_right(ts, horizon)]:
            if r.ts <= w.until or r.pid in pids:
                found.append(
                    f"fault {w.fault}: {r.show()} started {r.ts - w.since + TTL_S:.3f}s after "
                    f"{w.node} was paused or cut (lease over; back {w.until:.6f}, "
                    f"declared dead {w.declared_dead})"
                )
    return found


def token_checks(runs: Sequence[Run]) -> list[str]:
    """Per entity, by start time: the fencing token never goes down, and grows when the
    entity runs on another node than the time before."""
    by_entity: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_entity[r.entity].append(r)
    found = []
    for entity, ers in by_entity.items():
        ers.sort(key=lambda r: r.ts)
        for a, b in itertools.pairwise(ers):
            if b.token < a.token or (b.node != a.node and b.token == a.token):
                found.append(f"{entity}: token {a.token} on {a.node}, then {b.token} on {b.node}")
    return found


def ledger(
    runs: list[Run],
    acked: Mapping[str, tuple[str, str, int]],
    acked_at: Mapping[str, float],
    letters: list[DeadLetter],
    faults: list[ClusterFault],
    windows: list[FenceWindow],
    store: redis.Redis | None,
) -> dict[str, Any]:
    """Every check on what ran so far; with ``store`` (the end), lost messages with their
    state in every node's log, else messages acknowledged over OVERDUE_S ago that did not
    start nor were dead-lettered (``overdue``: not a failure by itself)."""
    runs = sorted(runs, key=lambda r: r.ts)
    rows = [r.row for r in runs if r.row is not None]
    duplicates = duplicate_ids(rows)
    by_mid: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_mid[r.mid].append(r)
    fifo, fifo_unacked, mismatched = fifo_breaks(rows, acked)
    figures = dead_letter_figures(rows, letters, faults)
    overlaps, overlap_info = find_overlaps(runs)
    fenced = fenced_starts(runs, windows)
    tokens = token_checks(runs)
    dead = {d.id: d for d in letters}
    missing = [mid for mid in acked if mid not in by_mid and mid not in dead]
    now = time.time()
    overdue = [mid for mid in missing if acked_at.get(mid, now) < now - OVERDUE_S]
    lost: list[str] = []
    lost_states: dict[str, str] = {}
    if store is not None:
        lost = missing
        known = sorted(texts(store.smembers(nodes_key(KEY_PREFIX))))
        for mid in lost:
            states = []
            for sid in known:
                entry = store.hgetall(LogKeys(KEY_PREFIX, sid).entry(mid))
                if entry:
                    fields = {text(k): text(v) for k, v in entry.items()}
                    keep = ("state", "attempts", "moved_by", "reason", "enqueued_at")
                    states.append(
                        f"{sid}: " + ", ".join(f"{k}={fields[k]}" for k in keep if k in fields)
                    )
            lost_states[mid] = "; ".join(states) or "no log entry"
    interrupted = [d for d in letters if d.reason == "interrupted"]
    return {
        "duplicates": len(duplicates),
        "overlaps": len(overlaps),
        "fifo_breaks": len(fifo),
        "lost": len(lost),
        "ran_after_dead_lettered": len(figures.ran_after_dead),
        "started_while_fenced": len(fenced),
        "token_regressions": len(tokens),
        "overdue": len(overdue),
        "examples": {
            "duplicates": [
                f"{mid}: " + " / ".join(r.show() for r in by_mid[mid]) for mid in duplicates[:5]
            ],
            "overlaps": overlaps[:5],
            "fifo_breaks": fifo[:5],
            "lost": [
                f"{mid} (acked {acked_at.get(mid, 0):.6f}): {lost_states[mid]}" for mid in lost[:8]
            ],
            "ran_after_dead_lettered": [
                f"{line}; dead letter in {dead[mid].node}'s log, {dead[mid].error or {}}; ran: "
                + " / ".join(r.show() for r in by_mid[mid])
                for line in figures.ran_after_dead[:5]
                for mid in [line.split(":", 1)[0]]
            ],
            "started_while_fenced": fenced[:5],
            "token_regressions": tokens[:5],
            "overdue": overdue[:5],
        },
        "lost_log_states": dict(Counter(s.split(", ")[0] for s in lost_states.values())),
        "executions": len(runs),
        "distinct_ran": len(by_mid),
        "completed": sum(1 for r in runs if r.end is not None),
        "thrown": sum(1 for r in runs if r.thrown is not None),
        "thrown_by": dict(Counter(r.thrown_what for r in runs if r.thrown is not None)),
        "no_end": sum(1 for r in runs if r.end is None and r.thrown is None),
        "ran_not_acked": sum(1 for mid in by_mid if mid not in acked),
        "fifo_breaks_unacked": fifo_unacked,
        "record_meta_mismatches": mismatched,
        "dead_letters": len(letters),
        "dead_letters_acked": sum(1 for d in letters if d.id in acked),
        "dead_letter_reasons": dict(figures.reasons),
        "interrupted_ran": figures.interrupted_ran,
        "interrupted_never_ran": figures.interrupted_never,
        "dead_letters_by_fault_kind": {k: dict(v) for k, v in figures.by_kind.items()},
        "dead_letters_by_node": dict(Counter(d.node for d in letters)),
        "interrupted_by_fault": dict(
            Counter(str(_fault_index(faults, d.dead_lettered_at)) for d in interrupted)
        ),
        "executions_by_node": dict(Counter(r.node for r in runs)),
        "entities": len({r.entity for r in runs}),
        **overlap_info,
    }


def _fault_index(faults: Sequence[Fault], t: float) -> int:
    index = 0
    for f in faults:
        if f.started <= t:
            index = f.index
    return index


# ---- the summary ------------------------------------------------------------------------------


def print_summary(s: dict[str, Any], faults: list[ClusterFault]) -> None:
    out = [
        "",
        f"## aqnode cluster soak: {len(faults)} faults of {s['faults_asked']} (seed {s['seed']})",
        "",
        f"3 nodes (n1, n2, n3; {s['shards']} shard(s) each; heartbeat_ms {HEARTBEAT_MS}, "
        f"node_ttl_ms {NODE_TTL_MS}, leader_debounce_ms {LEADER_DEBOUNCE_MS}), each through "
        f"its own TCP proxy to one redis-server (AOF on); {s['senders']} senders x "
        f"{s['lanes']} lanes ({', '.join(f'{k} {v}' for k, v in s['modes'].items())}) over "
        f"{s['entities_fixed']} fixed entities and {s['rotating']} slots renamed every "
        f"{s['rotate_s']:g}s ({s['entities']} entities in all); handler {s['handler_ms']} ms "
        f"({s['long_share']:.0%} of them {s['long_ms']} ms); "
        f"{s['machine']['nproc']} CPUs, all on this machine.",
        f"run time {s['run_s']:.1f}s (storm {s['storm_s']:.1f}s, stop {s['stop_s']:.1f}s, "
        f"settle {s['settle_s']:.1f}s); aqnode at {s['commit']}",
        "",
        f"| {'check':<52} | {'count':>7} | must be 0 |",
        f"|{'-' * 54}|{'-' * 9}|-----------|",
    ]
    for key, label in (
        ("duplicates", "duplicates (a message id started twice)"),
        ("overlaps", "overlaps (one entity, two executions at once)"),
        ("fifo_breaks", "FIFO breaks (acked, per entity and sender)"),
        ("lost", "lost (acked, neither ran nor dead-lettered)"),
        ("ran_after_dead_lettered", "ran after being dead-lettered"),
        ("started_while_fenced", "started while fenced (paused/cut past its lease)"),
        ("token_regressions", "fencing token not growing on a move"),
    ):
        mark = "ok" if s[key] == 0 else "FAIL"
        out.append(f"| {label:<52} | {s[key]:>7} | {mark:<9} |")
    out += ["", f"| {'figure':<52} | {'value':>9} |", f"|{'-' * 54}|{'-' * 11}|"]
    for key, label in (
        ("sent", "messages sent"),
        ("acked", "messages acknowledged"),
        ("unacked_at_stop", "  resends given up at the stop (not acked)"),
        ("executions", "executions (S lines)"),
        ("completed", "  ran to the end (E lines)"),
        ("thrown", "  thrown out (X lines)"),
        ("no_end", "  ended by a kill (no E / X line)"),
        ("ran_not_acked", "ran, not acked (a failed call that landed)"),
        ("fifo_breaks_unacked", "FIFO breaks involving unacked messages"),
        ("dead_letters", "dead letters"),
        ("dead_letters_acked", "  of acknowledged messages"),
        ("interrupted_ran", "  interrupted, had started"),
        ("interrupted_never_ran", "  interrupted, never started"),
        ("entities", "entities"),
        ("entity_moves", "entity moves (next execution on another node)"),
        ("thrown_after_entity_ran_elsewhere", "thrown out after the entity ran elsewhere"),
    ):
        value = s[key]
        out.append(f"| {label:<52} | {value!s:>9} |")
    out.append(f"dead letters by reason: {s['dead_letter_reasons'] or 'none'}")
    if s["thrown_by"]:
        out.append(f"thrown out by: {s['thrown_by']}")
    out.append(f"executions by node: {s['executions_by_node']}")
    out += [
        "",
        f"| {'fault kind':<12} | {'count':>5} | {'outcomes':<58} | {'back in s avg/max':>17} | "
        f"{'max ack gap s':>13} | {'DL started':>10} | {'DL never':>8} |",
        f"|{'-' * 14}|{'-' * 7}|{'-' * 60}|{'-' * 19}|{'-' * 15}|{'-' * 12}|{'-' * 10}|",
    ]
    by_kind = s["dead_letters_by_fault_kind"]
    for kind in ("before any fault", *KINDS):
        fs = [f for f in faults if f.kind == kind]
        dl = by_kind.get(kind, {})
        started = sum(v for k, v in dl.items() if "never" not in k)
        never = sum(v for k, v in dl.items() if "never" in k)
        if not fs and not dl:
            continue
        outcomes = Counter(_outcome_class(f) for f in fs)
        text = ", ".join(f"{v} {k}" for k, v in outcomes.most_common()) or "-"
        rec = (
            f"{sum(f.recovery_s for f in fs) / len(fs):.1f}/{max(f.recovery_s for f in fs):.1f}"
            if fs
            else "-"
        )
        gap = f"{max(f.max_ack_gap_s for f in fs):.2f}" if fs else "-"
        out.append(
            f"| {kind:<12} | {len(fs):>5} | {text[:58]:<58} | {rec:>17} | {gap:>13} | "
            f"{started:>10} | {never:>8} |"
        )
    out.append("")
    out.append(f"faults by node: {dict(Counter(f.node for f in faults))}")
    if s["refusals"]:
        out.append(f"'once' senders' refusals: {s['refusals']}")
    if s["resent"]:
        out.append(f"resends by code: {s['resent']}")
    for r in s["error_messages"][:8]:
        out.append(f"  {r['count']:>6} x {r['code']}: {r['message']}")
    if s["stuck"]:
        out.append(f"messages unacknowledged for over {STUCK_S:.0f}s: {len(s['stuck'])}")
        out += [f"  {x}" for x in s["stuck"][:5]]
    if s["lost_log_states"]:
        out.append(f"lost messages' state in the logs: {s['lost_log_states']}")
    for key, examples in s["examples"].items():
        if examples and key != "overdue":
            out.append(f"{key}, e.g.:")
            out += [f"  {e}" for e in examples]
    if s["first_violation"]:
        out.append(f"first seen after fault: {s['first_violation']}")
    for sid, errors in s["node_log_errors"].items():
        if errors:
            out.append(f"{sid} log ERROR lines / tracebacks (numbers blanked):")
            out += [f"  {n:>5} x {m}" for m, n in errors.items()]
    if s["findings"]:
        out.append("findings:")
        out += [f"  - {f}" for f in s["findings"]]
    out += ["", "RESULT: " + ("PASS" if s["passed"] else "FAIL")]
    print("\n".join(out), flush=True)


def _outcome_class(f: ClusterFault) -> str:
    o = f.outcome
    if o.startswith("exited 1 (declared dead)"):
        return "exited fenced+restarted"
    if o.startswith("exited"):
        return "exited other"
    if o.startswith("carried on"):
        return "carried on"
    for tier in DOWN_TIERS:
        if o.startswith(tier):
            return f"{tier}+restarted"
    return o.split(" (")[0]


# ---- main ---------------------------------------------------------------------------------------


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "aqnode"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return f"unknown ({ROOT} is not a git checkout)"
    return head + (" (aqnode/ modified)" if dirty else "")


async def soak(args: argparse.Namespace, workdir: Path, holder: list[Storm]) -> dict[str, Any]:
    started = time.monotonic()
    records_dir = workdir / "records"
    records_dir.mkdir()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(redis_server(workdir / "redis", aof=True))
        helper = stack.enter_context(proxies(server.port, len(IDS)))
        nodes = []
        for i, sid in enumerate(IDS):
            spec = node_spec(
                sid,
                server.url,
                args.shards,
                cluster=True,
                handlers="bench.cluster_soak",
                entity_type=ENTITY_TYPE,
            )
            spec = dataclasses.replace(
                spec,
                env=(
                    *spec.env,
                    ("AQ_SOAK_RECORD_DIR", str(records_dir)),
                    ("AQ_SOAK_NODE", sid),
                ),
            )
            nodes.append(stack.enter_context(aqnode_serve(workdir, helper.url(i), spec)))
        store = stack.enter_context(server.client())
        storm = Storm(args, nodes, helper, store, Executions(records_dir))
        holder.append(storm)
        stack.callback(storm.cont_all)  # runs first: no node stays stopped
        for node in nodes:
            if not await wait_up(node):
                raise RuntimeError(f"{node.spec.server_id} exited at start:\n{tail(node.log_path)}")
        formed = await wait_agreement(nodes, 30.0)
        if formed is None:
            raise RuntimeError("the three nodes did not agree on a master in 30 s")
        storm.say(
            f"cluster formed: master {formed[0]} epoch {formed[1]}; "
            + ", ".join(
                f"{n.spec.server_id} {n.address} pid {n.proc.pid} via :{helper.ports[i]}"
                for i, n in enumerate(nodes)
            )
            + f"; redis :{server.port}; workdir {workdir}"
        )
        load = Load([n.address for n in nodes], args)
        load.start()
        try:
            await storm.run(load, started + args.storm_limit)
            storm_s = time.monotonic() - started
            if not storm.stalled:
                await asyncio.sleep(1.0)
        finally:
            stopping = time.monotonic()
            storm.say(f"stopping the load ({len(load.acked)} acknowledged)")
            await load.stop()
        stop_s = time.monotonic() - stopping
        storm.say(f"settling ({len(load.acked)} acknowledged, {len(load.unacked)} given up)")
        settle_start = time.monotonic()
        settled, live = await storm.settle()
        settle_s = time.monotonic() - settle_start
        summary = await asyncio.to_thread(storm.ledger, True)
        passed = settled and not storm.stalled and all(summary[k] == 0 for k in CHECKS)
        summary.update(
            seed=args.seed,
            faults_asked=args.faults,
            faults_done=len(storm.faults),
            faults=dict(Counter(f.kind for f in storm.faults)),
            shards=args.shards,
            senders=args.senders,
            lanes=args.lanes,
            modes=dict(Counter(load.mode(i) for i in range(args.senders))),
            entities_fixed=args.entities,
            rotating=args.rotating,
            rotate_s=args.rotate_s,
            handler_ms=args.handler_ms,
            long_share=args.long_share,
            long_ms=args.long_ms,
            sent=load.sent,
            acked=len(load.acked),
            acked_by_mode=dict(load.acked_by_mode),
            unacked_at_stop=len(load.unacked),
            refusals=dict(load.refused),
            resent=dict(load.resent),
            error_messages=[
                {"code": code, "message": msg, "count": n}
                for (code, msg), n in load.messages.most_common()
            ],
            stuck=load.stuck,
            id_mismatches=load.id_mismatches,
            backlog_waits=load.backlog_waits,
            run_s=time.monotonic() - started,
            storm_s=storm_s,
            stop_s=stop_s,
            settle_s=settle_s,
            settled=settled,
            live_after_settle=live,
            stalled=storm.stalled,
            unexpected_exits=storm.unexpected_exits,
            first_violation=storm.first_violation,
            findings=storm.findings,
            node_log_errors={n.spec.server_id: log_errors(n.log_path) for n in nodes},
            record_bad_lines=storm.records.bad_lines,
            record_orphan_ends=storm.records.orphan_ends,
            machine=machine(),
            commit=commit(),
            passed=passed,
            workdir=str(workdir),
            fault_log=[asdict(f) for f in storm.faults],
            fence_windows=[asdict(w) for w in storm.windows],
        )
        print_summary(summary, storm.faults)
        storm.say("stopping the nodes")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/soak --cluster",
        description="A crash storm against a 3-node aqnode cluster (its own redis-server, "
        "a TCP proxy per node): node kill -9, master kill -9, shard kill -9, SIGSTOP pauses "
        "and Redis cuts at random under load, the ledger checked after each fault and at "
        "the end (duplicates, overlaps, FIFO, lost, ran after dead-lettered, started while "
        "fenced, fencing tokens). Exit 1 if a check fails.",
    )
    p.add_argument("--faults", type=int, default=100, help="faults to inject (100)")
    p.add_argument("--seed", type=int, help="random seed (default: from the clock; printed)")
    p.add_argument("--shards", type=int, default=1, help="shards per node (1)")
    p.add_argument("--senders", type=int, default=6, help="senders, kinds in turn (6)")
    p.add_argument("--lanes", type=int, default=2, help="lanes per sender (2)")
    p.add_argument("--entities", type=int, default=12, help="fixed entities (12)")
    p.add_argument("--rotating", type=int, default=12, help="renamed entity slots (12)")
    p.add_argument("--rotate-s", type=float, default=4.0, help="rename slots every S s (4)")
    p.add_argument("--handler-ms", type=int, default=5, help="each execution's sleep (5 ms)")
    p.add_argument(
        "--long-share",
        type=float,
        default=0.05,
        help="share of the messages whose execution sleeps --long-ms instead (0.05)",
    )
    p.add_argument("--long-ms", type=int, default=100, help="a long execution's sleep (100 ms)")
    p.add_argument("--pause-ms", type=float, default=10.0, help="each lane's pause (10 ms)")
    p.add_argument(
        "--max-backlog",
        type=int,
        default=3000,
        help="senders wait while acknowledged minus started exceeds this (3000)",
    )
    p.add_argument(
        "--progress",
        type=int,
        default=50,
        help="new acks and executions to see within 30 s after each fault (50)",
    )
    p.add_argument("--pause-min", type=float, default=2.0, help="min pause between faults (s)")
    p.add_argument("--pause-max", type=float, default=4.0, help="max pause between faults (s)")
    p.add_argument(
        "--storm-limit",
        type=float,
        help="seconds after which no new fault starts (default 120 + 20 x faults)",
    )
    p.add_argument(
        "--settle-timeout", type=float, default=180.0, help="seconds to settle at the end (180)"
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated fault kinds to draw from ({','.join(KINDS)})",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.storm_limit is None:
        args.storm_limit = 120.0 + 20.0 * args.faults
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not args.kinds or set(args.kinds) - set(KINDS):
        p.error(f"--kinds: choose from {', '.join(KINDS)}")
    if args.faults < 0 or min(args.shards, args.senders, args.lanes, args.progress) < 1:
        p.error("--faults must be >= 0; --shards, --senders, --lanes, --progress >= 1")
    if args.entities + args.rotating < 1 or args.rotate_s <= 0:
        p.error("--entities + --rotating must be >= 1 and --rotate-s > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aqnode-cluster-soak-"))
    limit = args.storm_limit + STOP_GRACE_S + args.settle_timeout + 300.0
    finished = threading.Event()
    holder: list[Storm] = []

    def watchdog() -> None:
        if finished.wait(limit):
            return
        print(
            f"cluster soak: hard time limit ({limit:.0f}s) reached; exiting (workdir "
            f"{workdir}; the nodes, proxies and Redis die with this process)",
            file=sys.stderr,
            flush=True,
        )
        for storm in holder:
            storm.cont_all()
        os._exit(3)

    threading.Thread(target=watchdog, name="cluster-soak-watchdog", daemon=True).start()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    print(
        f"cluster soak: seed {args.seed}, {args.faults} faults of {', '.join(args.kinds)}; "
        f"workdir {workdir}",
        file=sys.stderr,
        flush=True,
    )
    passed = False
    try:
        summary = asyncio.run(soak(args, workdir, holder))
        passed = summary["passed"]
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    except RuntimeError as exc:
        print(f"cluster soak: set-up failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for storm in holder:
            storm.cont_all()
        finished.set()
        if passed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"cluster soak: working directory kept: {workdir}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
