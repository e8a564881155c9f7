"""A bounded fault storm: ``scripts/soak [--faults N] [--seed S] [--json FILE]``.

It starts its own ``redis-server`` (a free TCP port on 127.0.0.1, a temporary directory,
``appendonly yes``, ``appendfsync everysec``) and one ``aqnode serve`` node on the
``tests.handlers.testkit`` handlers. Senders (``--senders``, each on its own Client, each
awaiting its ``enqueue``: an acknowledgement) send ``Record`` messages round-robin over
``--entities`` entities without pause while ``--faults`` faults, drawn at random from
``--seed``, are injected one after the other with a pause between them:

- ``shard-kill``: ``kill -9`` of a random shard; the node restarts it;
- ``supervisor-kill``: ``kill -9`` of ``aqnode serve`` (its shards die with it), then the
  node is started again on the same config;
- ``redis-freeze``: ``SIGSTOP`` of redis-server for 0.5 to 6 s, then ``SIGCONT``;
- ``redis-restart``: ``SHUTDOWN`` (the AOF is fsynced), 0.5 to 3 s down, started again on
  the same port and directory.

``Record`` appends one line per execution (time, pid, entity, sender, seq, message id)
to a file per shard process. After the last fault, the senders stop and the soak waits
until every acknowledged message either ran or is in the dead-letter queue and the node
has no live message left; then it checks and prints:

- duplicates: a message id that ran more than once;
- overlaps: two executions of one entity at once. ``Record`` writes its line, then
  sleeps 2 ms (a uvloop timer: at least 1 ms of real time, its clock counts in whole
  ms), so the next execution of that entity starts at least 1 ms after the line's time;
  a gap under 0.9 ms, or one shard process running an entity after another process
  already did and before it again (interleaved pids), is an overlap;
- FIFO breaks: per entity and sender, acknowledged messages that ran out of seq order
  (a message whose enqueue was refused or broken off may have landed anyway; the node
  adopts it behind newer ones, as documented, so those are counted apart);
- lost: acknowledged ids that neither ran nor are in the dead-letter queue;
- ran after dead-lettered: a dead letter whose Record line is later than its
  ``dead_lettered_at`` (told INTERRUPTED, then run anyway);
- dead letters by reason, ``interrupted`` split into ran (a Record line exists: the
  handler had started) and never ran, and by the fault that preceded them.

Liveness: after each fault it waits for 50 new acks (30 s at most). A node that makes
no progress ends the storm (more faults would only hide the stall, and a supervisor kill
would heal it); settling gives up after 120 s, or after 30 s in which nothing ran or was
dead-lettered. Either is printed as a finding, with the node's status and its log's
counts; acknowledged messages still stuck then count as lost, with their state in the
log.

It exits 1 if any of duplicates, overlaps, FIFO breaks, lost or ran-after-dead-lettered
is not 0, or the node did not settle; 2 for a set-up failure; 3 when the hard time limit
(storm limit + settle timeout + 240 s) killed it. Every process it starts gets
PR_SET_PDEATHSIG and is stopped on the way out; traffic goes to 127.0.0.1 only. The
working directory is removed unless ``--keep`` or a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from aqnode.client import Client, SyncClient, background_loop
from aqnode.errors import AqError
from aqnode.wal.dlq import DeadLetter, DeadLetterQueue
from aqnode.wal.keys import LogKeys
from bench.procs import ROOT, _stop_group, die_with_us, free_port, quote, tail
from tests.handlers.testkit import Record

NODE_ID = "soak-node"
KEY_PREFIX = "aq"
KINDS = ("shard-kill", "supervisor-kill", "redis-freeze", "redis-restart")
OVERLAP_GAP_S = 0.0009  #: same-entity starts closer than this overlapped (see docstring)
PROGRESS_ACKS = 50  #: acks to wait for after each fault before the pause
PROGRESS_TIMEOUT_S = 30.0
SETTLE_IDLE_S = 30.0  #: settling gives up when nothing ran or was dead-lettered this long
READY_TIMEOUT_S = 60.0


def blank(text: str) -> str:
    """``text`` with message ids, addresses and numbers blanked, to group alike lines."""
    text = re.sub(r"[0-9a-f]{10}-[0-9a-f]+", "<id>", text)
    text = re.sub(r"\d+(\.\d+)*(:\d+)?", "N", text)
    return text[:200]


def log(start: float, text: str) -> None:
    print(f"[{time.monotonic() - start:7.1f}s] {text}", file=sys.stderr, flush=True)


# ---- redis-server ----------------------------------------------------------------------


class RedisProc:
    """One redis-server on 127.0.0.1 with AOF on; stop/start keep the port and the data."""

    def __init__(self, directory: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("soak: redis-server is not on PATH (scripts/setup installs it)")
        self.exe = exe
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = directory / "redis.log"
        self.conf = directory / "redis.conf"
        self.conf.write_text(
            "\n".join(
                [
                    "daemonize no",
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {quote(str(directory))}",
                    f"logfile {quote(str(self.log_path))}",
                    'save ""',
                    "appendonly yes",
                    "appendfsync everysec",
                ]
            )
            + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10.0)

    def start(self) -> None:
        launch = die_with_us()  # call from the main thread: PDEATHSIG follows the thread
        self.proc = subprocess.Popen(
            [*launch.prefix, self.exe, str(self.conf)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=launch.preexec_fn,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{tail(self.log_path)}")
            with (
                contextlib.suppress(redis.RedisError, OSError),
                redis.Redis(
                    host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0
                ) as c,
            ):
                if c.info("server").get("process_id") == self.proc.pid:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer:\n{tail(self.log_path)}")
            time.sleep(0.02)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def shutdown(self) -> None:
        """SHUTDOWN (AOF fsynced), over a raw socket (success closes it without a reply)."""
        assert self.proc is not None
        self.thaw()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
                reply = b"".join(iter(lambda: sock.recv(4096), b""))
            if reply:
                raise RuntimeError(f"SHUTDOWN refused: {reply!r}")
        except (OSError, RuntimeError):
            self.proc.send_signal(signal.SIGTERM)  # also a clean shutdown with AOF fsync
        self.proc.wait(20)

    def close(self) -> None:
        self.thaw()
        if self.proc is not None:
            _stop_group(self.proc, 5.0)


# ---- aqnode serve ----------------------------------------------------------------------


class NodeProc:
    """``aqnode serve`` on the testkit handlers; ``spawn()`` again after a kill."""

    def __init__(self, directory: Path, redis_url: str, records: Path, shards: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = directory / "node.toml"
        self.log_path = directory / "node.log"
        self.config.write_text(
            "\n".join(
                [
                    'handlers = ["tests.handlers.testkit"]',
                    f"shards = {shards}",
                    f'listen = "{self.address}"',
                    f'server_id = "{NODE_ID}"',
                    f'key_prefix = "{KEY_PREFIX}"',
                    f"data_dir = {quote(str(directory / 'data'))}",
                    "shard_heartbeat_ms = 100",
                    "drain_timeout_ms = 2000",
                    "[redis]",
                    f"url = {quote(redis_url)}",
                ]
            )
            + "\n"
        )
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p
        )
        self.env["AQ_TEST_RECORD_DIR"] = str(records)
        self.env["AQ_TEST_REDIS_URL"] = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.all_procs: list[subprocess.Popen[bytes]] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        launch = die_with_us()
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    *launch.prefix,
                    sys.executable,
                    "-m",
                    "aqnode",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                cwd=self.dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=launch.preexec_fn,
            )
        self.all_procs.append(self.proc)

    def status(self, timeout: float = 2.0) -> Any:
        with SyncClient(self.address) as client:
            return client.status(timeout=timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"aqnode serve exited with {self.proc.returncode}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(AqError):
                status = self.status()
                if status.shards and all(s.alive and s.pid for s in status.shards):
                    return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not get ready:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.all_procs:
            _stop_group(proc, 15.0)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---- the load ----------------------------------------------------------------------------


@dataclass
class Load:
    """Senders on the client's background loop; each awaits its enqueue (an ack)."""

    address: str
    senders: int
    entities: int
    pause_s: float
    acked: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> e, s, seq
    ack_times: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    #: (code, message with ids and numbers blanked) -> count
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _done: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._done = asyncio.run_coroutine_threadsafe(self._main(), background_loop())

    def stop(self) -> None:
        self._stop.set()
        assert self._done is not None
        self._done.result(90)

    async def _main(self) -> None:
        await asyncio.gather(*(self._sender(i) for i in range(self.senders)))

    async def _sender(self, index: int) -> None:
        name = f"s{index}"
        async with Client(self.address) as bus:
            seq = 0
            while not self._stop.is_set():
                entity = f"e{(seq * 7 + index) % self.entities}"
                self.sent += 1
                try:
                    mid = await bus.enqueue(Record(name=entity, sender=name, seq=seq))
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
                    self.acked[mid] = (entity, name, seq)
                    self.ack_times.append(time.time())
                seq += 1
                await asyncio.sleep(self.pause_s)


# ---- what ran ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    ts: float
    pid: int
    entity: str
    sender: str
    seq: int
    mid: str


class Records:
    """The Record files, read incrementally (whole lines only)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.offsets: dict[Path, int] = {}
        self.rows: list[Row] = []
        self.bad_lines = 0

    def refresh(self) -> list[Row]:
        for path in sorted(self.dir.glob("exec-*.log")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + end
            for line in data[:end].decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 6:
                    self.bad_lines += 1
                    continue
                ts, pid, entity, sender, seq, mid = parts
                self.rows.append(Row(float(ts), int(pid), entity, sender, int(seq), mid))
        return self.rows


# ---- faults ----------------------------------------------------------------------------------


@dataclass
class Fault:
    index: int
    kind: str
    started: float  #: wall clock, for matching dead letters and Record lines
    detail: str = ""
    ended: float = 0.0  #: the node / Redis was back
    recovery_s: float = 0.0  #: from the fault to "back" (restart, SIGCONT + ready, ...)
    progressed: bool = True  #: PROGRESS_ACKS new acks came within PROGRESS_TIMEOUT_S
    #: the longest time without an ack, from the fault to 5 s after it ended (or the next)
    max_ack_gap_s: float = 0.0
    max_ack_gap_at_s: float = 0.0  #: where that gap began, from the fault's start
    victim_pid: int = 0


class Storm:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.records_dir = workdir / "records"
        self.records_dir.mkdir()
        self.redis = RedisProc(workdir / "redis")
        self.node: NodeProc | None = None
        self.load: Load | None = None
        self.faults: list[Fault] = []
        self.findings: list[str] = []
        self.t0 = time.monotonic()
        self.unexpected_exits = 0
        self.stalled = False

    def say(self, text: str) -> None:
        log(self.t0, text)

    # -- set-up and tear-down ---------------------------------------------------------

    def start(self) -> None:
        self.redis.start()
        self.say(
            f"redis-server pid {self.redis.proc.pid if self.redis.proc else 0} "
            f"on 127.0.0.1:{self.redis.port} (AOF on), dir {self.workdir}"
        )
        self.node = NodeProc(
            self.workdir / "node", self.redis.url, self.records_dir, self.args.shards
        )
        self.node.spawn()
        status = self.node.wait_ready()
        self.say(
            f"aqnode serve pid {self.node.pid} on {self.node.address}, shards "
            f"{[s.pid for s in status.shards]}"
        )
        self.load = Load(
            self.node.address, self.args.senders, self.args.entities, self.args.pause_ms / 1000
        )
        self.load.start()
        self.wait_progress(PROGRESS_ACKS * 4)

    def close(self) -> None:
        if self.load is not None and not self.load._stop.is_set():
            with contextlib.suppress(Exception):
                self.load.stop()
        if self.node is not None:
            self.node.close()
        self.redis.close()

    def acks(self) -> int:
        return len(self.load.acked) if self.load else 0

    def wait_progress(self, count: int, timeout: float = PROGRESS_TIMEOUT_S) -> bool:
        target = self.acks() + count
        deadline = time.monotonic() + timeout
        while self.acks() < target:
            self.check_node_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def diagnose(self) -> str:
        """What the node and its log look like now (for a stall)."""
        assert self.node is not None
        parts = []
        try:
            st = self.node.status(timeout=5.0)
            parts.append(
                f"status: live {st.live_messages}, shards "
                + ", ".join(
                    f"{s.index}: pid {s.pid} alive {s.alive} queued {s.queue_depth} "
                    f"handled {s.handled}"
                    for s in st.shards
                )
            )
        except AqError as exc:
            parts.append(f"status: {exc.code}")
        try:
            with self.redis.client() as c:
                keys = LogKeys(KEY_PREFIX, NODE_ID)
                parts.append(f"log: {c.zcard(keys.live)} live, {c.zcard(keys.dlq)} dead letters")
        except redis.RedisError as exc:
            parts.append(f"log: {exc}")
        rows = Records(self.records_dir).refresh()
        last = max((r.ts for r in rows), default=0.0)
        parts.append(f"last execution {time.time() - last:.1f}s ago")
        return "; ".join(parts)

    def check_node_alive(self) -> None:
        """A node that exited on its own is a finding; start it again so the soak goes on."""
        node = self.node
        assert node is not None and node.proc is not None
        if node.proc.poll() is not None:
            self.unexpected_exits += 1
            self.findings.append(
                f"aqnode serve exited by itself with {node.proc.returncode} (log: {node.log_path})"
            )
            self.say(f"!! aqnode serve exited by itself ({node.proc.returncode}); restarting")
            node.spawn()
            node.wait_ready()

    # -- the storm ----------------------------------------------------------------------

    def run(self, deadline: float) -> None:
        for i in range(1, self.args.faults + 1):
            if time.monotonic() > deadline:
                self.findings.append(
                    f"time bound: stopped after {i - 1} of {self.args.faults} faults"
                )
                self.say("time bound reached: no more faults")
                break
            kind = self.rng.choice(self.args.kinds)
            fault = Fault(i, kind, time.time())
            began = time.monotonic()
            getattr(self, "_" + kind.replace("-", "_"))(fault)
            fault.recovery_s = time.monotonic() - began
            fault.ended = time.time()
            fault.progressed = self.wait_progress(PROGRESS_ACKS)
            if not fault.progressed:
                self.findings.append(
                    f"fault {i} ({kind}): fewer than {PROGRESS_ACKS} acks in "
                    f"{PROGRESS_TIMEOUT_S:.0f}s after it ended; {self.diagnose()}"
                )
            self.faults.append(fault)
            self.say(
                f"fault {i}/{self.args.faults} {kind}: {fault.detail}; back in "
                f"{fault.recovery_s:.2f}s, acked {self.acks()}"
                + ("" if fault.progressed else " (NO PROGRESS)")
            )
            if not fault.progressed:  # a stalled node: more faults would only hide it
                self.stalled = True
                self.findings.append(f"storm stopped after fault {i}: the node made no progress")
                self.say("the node made no progress: no more faults")
                break
            pause = self.rng.uniform(self.args.pause_min, self.args.pause_max)
            end = time.monotonic() + pause
            while time.monotonic() < end:
                self.check_node_alive()
                time.sleep(0.05)

    def _status(self, timeout: float = 20.0) -> Any:
        assert self.node is not None
        deadline = time.monotonic() + timeout
        while True:
            self.check_node_alive()
            try:
                return self.node.status()
            except AqError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _shard_kill(self, fault: Fault) -> None:
        index = self.rng.randrange(self.args.shards)
        status = self._status()
        victim = status.shards[index].pid
        deadline = time.monotonic() + 20
        while not (status.shards[index].alive and victim) and time.monotonic() < deadline:
            time.sleep(0.05)
            status = self._status()
            victim = status.shards[index].pid
        fault.victim_pid = victim
        fault.started = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(AqError):
                shard = self._status().shards[index]
                if shard.alive and shard.pid not in (0, victim):
                    fault.detail = f"shard {index} pid {victim} -> {shard.pid}"
                    return
            if time.monotonic() > deadline:
                fault.detail = f"shard {index} pid {victim} NOT restarted in 30s"
                self.findings.append(f"fault {fault.index}: {fault.detail}")
                return
            time.sleep(0.05)

    def _supervisor_kill(self, fault: Fault) -> None:
        node = self.node
        assert node is not None and node.proc is not None
        shard_pids = [s.pid for s in self._status().shards]
        old = node.pid
        fault.victim_pid = old
        fault.started = time.time()
        os.kill(old, signal.SIGKILL)
        node.proc.wait(10)
        t = time.monotonic()
        while not all(gone(p) for p in shard_pids):
            if time.monotonic() - t > 10:
                self.findings.append(
                    f"fault {fault.index}: shards {shard_pids} outlived their supervisor by 10s"
                )
                break
            time.sleep(0.01)
        shards_gone_s = time.monotonic() - t
        node.spawn()
        node.wait_ready()
        fault.detail = (
            f"supervisor pid {old} -> {node.pid} (old shards gone in {shards_gone_s * 1000:.0f} ms)"
        )

    def _redis_freeze(self, fault: Fault) -> None:
        seconds = self.rng.uniform(0.5, 6.0)
        fault.started = time.time()
        self.redis.freeze()
        try:
            time.sleep(seconds)
        finally:
            self.redis.thaw()
        fault.detail = f"SIGSTOP for {seconds:.1f}s"

    def _redis_restart(self, fault: Fault) -> None:
        seconds = self.rng.uniform(0.5, 3.0)
        fault.started = time.time()
        self.redis.shutdown()
        time.sleep(seconds)
        self.redis.start()
        fault.detail = f"SHUTDOWN, down {seconds:.1f}s"

    # -- settle ---------------------------------------------------------------------------

    def settle(self, records: Records, dlq: DeadLetterQueue) -> tuple[bool, int]:
        """Wait until every acked id ran or is dead-lettered and nothing is live."""
        assert self.load is not None and self.node is not None
        deadline = time.monotonic() + self.args.settle_timeout
        live = -1
        last_change, last_seen = time.monotonic(), None
        while True:
            rows = records.refresh()
            ran = {r.mid for r in rows}
            dead = {d.id for d in dlq.entries()}
            missing = sum(1 for mid in self.load.acked if mid not in ran and mid not in dead)
            with contextlib.suppress(AqError):
                live = self.node.status().live_messages
            if missing == 0 and live == 0:
                return True, live
            seen = (len(rows), len(dead), live)
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            idle = time.monotonic() - last_change
            if time.monotonic() > deadline or idle > SETTLE_IDLE_S:
                why = (
                    f"nothing changed for {idle:.0f}s"
                    if idle > SETTLE_IDLE_S
                    else f"not done in {self.args.settle_timeout:.0f}s"
                )
                self.findings.append(
                    f"not settled ({why}): {missing} acked messages neither ran nor were "
                    f"dead-lettered, {live} live in the log; {self.diagnose()}"
                )
                return False, live
            time.sleep(0.5)


# ---- checks ---------------------------------------------------------------------------------


def fault_before(faults: Sequence[Fault], t: float) -> str:
    """The kind of the last fault that started before ``t`` (wall clock)."""
    kind = "before any fault"
    for f in faults:
        if f.started <= t:
            kind = f.kind
    return kind


def duplicate_ids(rows: Sequence[Row]) -> list[str]:
    """Message ids with more than one execution."""
    runs = Counter(r.mid for r in rows)
    return sorted(mid for mid, n in runs.items() if n > 1)


def fifo_breaks(
    rows: Sequence[Row], acked: Mapping[str, tuple[str, str, int]]
) -> tuple[list[str], int, int]:
    """FIFO per entity and sender over ``rows`` (sorted by time): the acknowledged
    messages that ran after a later seq of theirs, the breaks that involve an
    unacknowledged message (counted apart: a refused or broken-off enqueue may have landed
    anyway), and the rows whose entity, sender and seq differ from what was acknowledged."""
    fifo_acked: list[str] = []
    fifo_unacked = 0
    last_acked: dict[tuple[str, str], int] = defaultdict(lambda: -1)
    last_any: dict[tuple[str, str], int] = defaultdict(lambda: -1)
    mismatched = 0
    for r in rows:
        key = (r.entity, r.sender)
        meta = acked.get(r.mid)
        if meta is not None:
            if meta != (r.entity, r.sender, r.seq):
                mismatched += 1
            if r.seq <= last_acked[key]:
                fifo_acked.append(
                    f"{r.entity} ran {r.sender}:{r.seq} after "
                    f"{r.sender}:{last_acked[key]} ({r.mid})"
                )
            last_acked[key] = max(last_acked[key], r.seq)
        elif r.seq <= last_any[key]:
            fifo_unacked += 1
        last_any[key] = max(last_any[key], r.seq)
    return fifo_acked, fifo_unacked, mismatched


@dataclass
class DeadLetterFigures:
    reasons: Counter[str]
    #: the kind of the fault before each dead letter -> "<reason> ran|never ran" -> count
    by_kind: dict[str, Counter[str]]
    ran_after_dead: list[str]  #: dead letters whose first execution is later
    interrupted_ran: int  #: dead-lettered ``interrupted`` whose handler had started
    interrupted_never: int


def dead_letter_figures(
    rows: Sequence[Row], letters: Sequence[DeadLetter], faults: Sequence[Fault]
) -> DeadLetterFigures:
    """The dead letters against what ran (``rows`` sorted by time)."""
    first_run: dict[str, Row] = {}
    for r in rows:
        first_run.setdefault(r.mid, r)
    reasons = Counter(d.reason for d in letters)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    ran_after_dead: list[str] = []
    for d in letters:
        ran = d.id in first_run
        kind = fault_before(faults, d.dead_lettered_at)
        label = f"{d.reason} ran" if ran else f"{d.reason} never ran"
        by_kind[kind][label] += 1
        if ran and first_run[d.id].ts > d.dead_lettered_at:
            ran_after_dead.append(
                f"{d.id}: dead-lettered {d.dead_lettered_at:.6f}, ran {first_run[d.id].ts:.6f}"
            )
    interrupted = [d for d in letters if d.reason == "interrupted"]
    interrupted_ran = sum(1 for d in interrupted if d.id in first_run)
    return DeadLetterFigures(
        reasons,
        by_kind,
        ran_after_dead,
        interrupted_ran,
        len(interrupted) - interrupted_ran,
    )


def analyse(
    storm: Storm, rows: list[Row], letters: list[DeadLetter], wal: redis.Redis
) -> dict[str, Any]:
    load = storm.load
    assert load is not None
    rows = sorted(rows, key=lambda r: r.ts)
    runs = Counter(r.mid for r in rows)
    duplicates = duplicate_ids(rows)

    # overlaps: too-close starts, and interleaved shard processes, per entity
    by_entity: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_entity[r.entity].append(r)
    short_gaps: list[str] = []
    interleaved: list[str] = []
    min_gap = float("inf")
    for entity, ers in by_entity.items():
        spans: dict[int, list[float]] = {}
        for a, b in itertools.pairwise(ers):
            gap = b.ts - a.ts
            min_gap = min(min_gap, gap)
            if gap < OVERLAP_GAP_S:
                short_gaps.append(
                    f"{entity}: {a.mid}@{a.ts:.6f} pid {a.pid} and {b.mid}@{b.ts:.6f} pid {b.pid}"
                )
        for r in ers:
            span = spans.setdefault(r.pid, [r.ts, r.ts])
            span[1] = r.ts
        ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
        for (pa, (_, a_end)), (pb, (b_start, _)) in itertools.pairwise(ordered):
            if b_start < a_end:
                interleaved.append(
                    f"{entity}: pid {pa} ran it until {a_end:.6f}, pid {pb} from {b_start:.6f}"
                )

    # FIFO per entity and sender: acked messages only (others counted apart)
    fifo_acked, fifo_unacked, mismatched = fifo_breaks(rows, load.acked)

    # dead letters
    dlq_ids = {d.id for d in letters}
    figures = dead_letter_figures(rows, letters, storm.faults)
    reasons, by_kind, ran_after_dead = figures.reasons, figures.by_kind, figures.ran_after_dead
    interrupted_ran, interrupted_never = figures.interrupted_ran, figures.interrupted_never

    # lost: acked, neither ran nor dead-lettered; where does the log say they are?
    lost = [mid for mid in load.acked if mid not in runs and mid not in dlq_ids]
    keys = LogKeys(KEY_PREFIX, NODE_ID)
    lost_states: Counter[str] = Counter()
    for mid in lost:
        state = wal.hget(keys.entry(mid), "state")
        lost_states[state.decode() if state else "no entry"] += 1

    unacked_ran = sum(1 for mid in runs if mid not in load.acked)

    # ack gaps per fault, and whether the other shards worked during a shard's outage
    acks = sorted(load.ack_times)
    starts = [f.started for f in storm.faults[1:]] + [float("inf")]
    for f, next_start in zip(storm.faults, starts, strict=False):
        until = min(f.ended + 5, next_start)
        window = [f.started, *(t for t in acks if f.started <= t <= until), f.ended]
        window.sort()
        gaps = [(b - a, a) for a, b in itertools.pairwise(window)]
        if gaps:
            gap, at = max(gaps)
            f.max_ack_gap_s, f.max_ack_gap_at_s = gap, at - f.started
    idle_survivors = 0
    for f in storm.faults:
        if f.kind == "shard-kill":
            during = [r for r in rows if f.started < r.ts < f.ended and r.pid != f.victim_pid]
            if not during and storm.args.shards > 1:
                idle_survivors += 1

    kinds = Counter(f.kind for f in storm.faults)
    return {
        "duplicates": len(duplicates),
        "overlaps": len(short_gaps) + len(interleaved),
        "fifo_breaks": len(fifo_acked),
        "lost": len(lost),
        "ran_after_dead_lettered": len(ran_after_dead),
        "examples": {
            "duplicates": duplicates[:5],
            "overlaps": (short_gaps + interleaved)[:5],
            "fifo_breaks": fifo_acked[:5],
            "lost": lost[:5],
            "ran_after_dead_lettered": ran_after_dead[:5],
        },
        "lost_log_states": dict(lost_states),
        "overlap_short_gaps": len(short_gaps),
        "overlap_interleaved_pids": len(interleaved),
        "min_same_entity_gap_ms": None if min_gap == float("inf") else min_gap * 1000,
        "fifo_breaks_unacked": fifo_unacked,
        "record_meta_mismatches": mismatched,
        "record_bad_lines": 0,
        "sent": load.sent,
        "acked": len(load.acked),
        "executions": len(rows),
        "distinct_ran": len(runs),
        "ran_not_acked": unacked_ran,
        "dead_letters": len(letters),
        "dead_letter_reasons": dict(reasons),
        "interrupted_ran": interrupted_ran,
        "interrupted_never_ran": interrupted_never,
        "dead_letters_by_fault_kind": {k: dict(v) for k, v in by_kind.items()},
        "faults": dict(kinds),
        "shard_kills_with_idle_survivors": idle_survivors,
        "refusals": dict(load.refused),
        "refusal_messages": [
            {"code": code, "message": msg, "count": n}
            for (code, msg), n in load.messages.most_common()
        ],
    }


def node_log_problems(path: Path) -> Counter[str]:
    """ERROR / CRITICAL lines and tracebacks in the node's log, ids and numbers blanked."""
    found: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return found
    for line in text.splitlines():
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
            msg = line.split(": ", 1)[-1] if " ERROR " in line or " CRITICAL " in line else line
            found[blank(msg)[:160]] += 1
    return found


def print_summary(s: dict[str, Any], faults: list[Fault]) -> None:
    out = []
    out.append("")
    out.append(
        f"aqnode soak: seed {s['seed']}, {len(faults)} faults of {s['faults_asked']}, "
        f"{s['shards']} shards, {s['senders']} senders, {s['entities']} entities"
    )
    out.append(
        f"run time {s['run_s']:.1f}s (storm {s['storm_s']:.1f}s, settle {s['settle_s']:.1f}s)"
    )
    out.append("")
    out.append(f"| {'check':<44} | {'count':>7} | must be 0 |")
    out.append(f"|{'-' * 46}|{'-' * 9}|-----------|")
    for key, label in (
        ("duplicates", "duplicates (a message id ran twice)"),
        ("overlaps", "overlaps (one entity, two runs at once)"),
        ("fifo_breaks", "FIFO breaks (acked, per entity and sender)"),
        ("lost", "lost (acked, neither ran nor dead-lettered)"),
        ("ran_after_dead_lettered", "ran after being dead-lettered"),
    ):
        mark = "ok" if s[key] == 0 else "FAIL"
        out.append(f"| {label:<44} | {s[key]:>7} | {mark:<9} |")
    out.append("")
    out.append(f"| {'figure':<44} | {'value':>9} |")
    out.append(f"|{'-' * 46}|{'-' * 11}|")
    for key, label in (
        ("sent", "messages sent"),
        ("acked", "messages acked"),
        ("executions", "executions (Record lines)"),
        ("ran_not_acked", "ran, not acked (refused or cut off, landed)"),
        ("fifo_breaks_unacked", "FIFO breaks involving unacked messages"),
        ("dead_letters", "dead letters"),
        ("interrupted_ran", "  interrupted, ran (handler had started)"),
        ("interrupted_never_ran", "  interrupted, never ran (no Record line)"),
        ("min_same_entity_gap_ms", "min gap between runs of one entity (ms)"),
        ("shard_kills_with_idle_survivors", "shard kills where no other shard ran"),
    ):
        value = s[key]
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        out.append(f"| {label:<44} | {text:>9} |")
    other = {k: v for k, v in s["dead_letter_reasons"].items() if k != "interrupted"}
    if other:
        out.append(f"other dead-letter reasons: {other}")
    out.append("")
    out.append(
        f"| {'fault kind':<16} | {'count':>5} | {'back in (s) avg/max':>19} | "
        f"{'max ack gap (s)':>15} | {'DL ran':>6} | {'DL never ran':>12} |"
    )
    out.append(f"|{'-' * 18}|{'-' * 7}|{'-' * 21}|{'-' * 17}|{'-' * 8}|{'-' * 14}|")
    by_kind = s["dead_letters_by_fault_kind"]
    for kind in ("before any fault", *KINDS):
        fs = [f for f in faults if f.kind == kind]
        dl = by_kind.get(kind, {})
        ran = sum(v for k, v in dl.items() if k.endswith(" ran") and "never" not in k)
        never = sum(v for k, v in dl.items() if "never" in k)
        if not fs and not dl:
            continue
        rec = (
            (f"{sum(f.recovery_s for f in fs) / len(fs):.2f}/{max(f.recovery_s for f in fs):.2f}")
            if fs
            else "-"
        )
        gap = f"{max(f.max_ack_gap_s for f in fs):.2f}" if fs else "-"
        out.append(
            f"| {kind:<16} | {len(fs):>5} | {rec:>19} | {gap:>15} | {ran:>6} | {never:>12} |"
        )
    out.append("")
    refusals = ", ".join(f"{k} {v}" for k, v in sorted(s["refusals"].items())) or "none"
    out.append(f"refusals seen by senders: {refusals}")
    for r in s["refusal_messages"][:8]:
        out.append(f"  {r['count']:>6} x {r['code']}: {r['message']}")
    if s["lost_log_states"]:
        out.append(f"lost messages' state in the log: {s['lost_log_states']}")
    for key, examples in s["examples"].items():
        if examples:
            out.append(f"{key}, e.g.:")
            out += [f"  {e}" for e in examples]
    if s["node_log_problems"]:
        out.append("node log ERROR lines / tracebacks (ids and numbers blanked):")
        out += [f"  {n:>5} x {m}" for m, n in s["node_log_problems"].items()]
    if s["findings"]:
        out.append("findings:")
        out += [f"  - {f}" for f in s["findings"]]
    out.append("")
    out.append("RESULT: " + ("PASS" if s["passed"] else "FAIL"))
    print("\n".join(out), flush=True)


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/soak",
        description="A bounded fault storm against one aqnode node and its own Redis.",
    )
    p.add_argument("--faults", type=int, default=30, help="faults to inject (30)")
    p.add_argument("--seed", type=int, help="random seed (default: from the clock; printed)")
    p.add_argument("--shards", type=int, default=2, help="shard processes (2)")
    p.add_argument("--senders", type=int, default=4, help="concurrent senders (4)")
    p.add_argument("--entities", type=int, default=32, help="entities (32)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON here")
    p.add_argument("--pause-ms", type=float, default=4.0, help="each sender's pause (4 ms)")
    p.add_argument("--pause-min", type=float, default=1.0, help="min pause between faults (s)")
    p.add_argument("--pause-max", type=float, default=3.0, help="max pause between faults (s)")
    p.add_argument(
        "--storm-limit",
        type=float,
        help="seconds after which no new fault starts (default 60 + 9 x faults)",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for everything acked to finish (120)",
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated fault kinds to draw from ({','.join(KINDS)})",
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.storm_limit is None:
        args.storm_limit = 60.0 + 9.0 * args.faults
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not args.kinds or set(args.kinds) - set(KINDS):
        p.error(f"--kinds: choose from {', '.join(KINDS)}")
    if args.faults < 0 or args.shards < 1 or args.senders < 1 or args.entities < 1:
        p.error("--faults must be >= 0; --shards, --senders, --entities >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aqnode-soak-"))
    storm = Storm(args, workdir)
    hard_limit = args.storm_limit + args.settle_timeout + 240.0
    finished = threading.Event()

    def watchdog() -> None:
        if finished.wait(hard_limit):
            return
        print(
            f"soak: hard time limit ({hard_limit:.0f}s) reached; killing everything "
            f"(workdir {workdir})",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(Exception):
            storm.redis.thaw()
        for proc in [*(storm.node.all_procs if storm.node else []), storm.redis.proc]:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        os._exit(3)

    threading.Thread(target=watchdog, name="soak-watchdog", daemon=True).start()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    storm.say(
        f"soak: seed {args.seed}, {args.faults} faults, {args.shards} shards, "
        f"{args.senders} senders, {args.entities} entities"
    )
    started = time.monotonic()
    passed = False
    try:
        try:
            storm.start()
        except (RuntimeError, AqError) as exc:
            print(f"soak: set-up failed: {exc}", file=sys.stderr)
            return 2
        storm.run(deadline=started + args.storm_limit)
        assert storm.load is not None and storm.node is not None
        if not storm.stalled:
            storm.wait_progress(PROGRESS_ACKS)
        storm.load.stop()
        storm_s = time.monotonic() - started
        storm.say(f"storm over: {len(storm.faults)} faults, acked {storm.acks()}; settling")
        wal = storm.redis.client()
        dlq = DeadLetterQueue(wal, KEY_PREFIX)
        records = Records(storm.records_dir)
        settle_start = time.monotonic()
        settled, live = storm.settle(records, dlq)
        settle_s = time.monotonic() - settle_start
        summary = analyse(storm, records.refresh(), dlq.entries(), wal)
        summary["record_bad_lines"] = records.bad_lines
        passed = settled and all(
            summary[k] == 0
            for k in ("duplicates", "overlaps", "fifo_breaks", "lost", "ran_after_dead_lettered")
        )
        summary.update(
            seed=args.seed,
            faults_asked=args.faults,
            shards=args.shards,
            senders=args.senders,
            entities=args.entities,
            run_s=time.monotonic() - started,
            storm_s=storm_s,
            settle_s=settle_s,
            settled=settled,
            live_after_settle=live,
            unexpected_node_exits=storm.unexpected_exits,
            node_log_problems=dict(node_log_problems(storm.node.log_path).most_common(12)),
            findings=storm.findings,
            passed=passed,
            workdir=str(workdir),
            fault_log=[asdict(f) for f in storm.faults],
        )
        print_summary(summary, storm.faults)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        wal.close()
    finally:
        storm.close()
        finished.set()
        if passed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak: working directory kept: {workdir}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
