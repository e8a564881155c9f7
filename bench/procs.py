"""The system under test's processes: a ``redis-server`` and ``aqnode serve`` nodes.

Both are started in their own process group (so the clean-up reaches every shard), get
PR_SET_PDEATHSIG (they die with the benchmark, even on ``kill -9``), and are always
stopped on the way out, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from aqnode.client import Client
from aqnode.errors import AqError

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0  #: seconds for redis-server / aqnode serve to come up
SETTLE_TIMEOUT_S = 30.0  #: seconds to wait for the node to be idle between runs
STOP_TIMEOUT_S = 15.0  #: seconds a SIGTERMed node gets to drain before SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def set_pdeathsig() -> None:
    """This process gets SIGTERM when its parent dies (Linux); a no-op elsewhere."""
    prctl = _prctl()
    if prctl is not None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Launch:
    """How to start a child that dies with us: ``setpriv --pdeathsig TERM`` in front of
    its command where util-linux has it, so that no Python code runs between fork and
    exec (this process has gRPC threads: gRPC then warns that it skips its fork handlers,
    and a forked child of a threaded process must not do much before exec); else a
    ``preexec_fn`` that calls ``prctl`` (looked up here, in the parent)."""

    prefix: tuple[str, ...]
    preexec_fn: Callable[[], None] | None


def die_with_us() -> Launch:
    setpriv = shutil.which("setpriv")
    if setpriv is not None and sys.platform.startswith("linux"):
        return Launch((setpriv, "--pdeathsig", "TERM", "--"), None)
    prctl = _prctl()
    if prctl is None:
        return Launch((), None)
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return Launch((), preexec)


def quote(value: str) -> str:
    """A TOML / redis.conf string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tail(path: Path, lines: int = 40) -> str:
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


# ---- redis-server --------------------------------------------------------------------------


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
                f"dir {quote(str(directory))}",
                f"logfile {quote(str(log_path))}",
                'save ""',
                f"appendonly {'yes' if aof else 'no'}",
                "appendfsync everysec",
            ]
        )
        + "\n"
    )
    launch = die_with_us()
    proc = subprocess.Popen(
        [*launch.prefix, exe, str(conf)],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us, not it: we stop it after the node
        preexec_fn=launch.preexec_fn,
    )
    server = RedisProc(proc, port, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"bench: redis-server exited at start:\n{tail(log_path)}")
            try:
                with server.client() as client:
                    if client.info("server").get("process_id") == proc.pid:
                        break
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: redis-server did not answer:\n{tail(log_path)}")
            time.sleep(0.02)
        yield server
    finally:
        _stop_group(proc, 5.0)


# ---- aqnode serve --------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """What differs between the nodes one benchmark starts (they may run side by side: each
    has its own ``server_id``, ``key_prefix`` and data directory)."""

    name: str  #: also the server_id suffix and the directory name
    shards: int
    idle_timeout_ms: int
    heartbeat_ms: int
    key_prefix: str
    handlers: str = "bench.handlers"  #: the handler module the shards import
    entity_type: str = "bench"  #: the ``[entities.X]`` table the idle timeout goes to
    server_id: str = ""  #: "" = ``bench-<name>``
    #: ``[cluster]`` keys and values; empty = no ``[cluster]`` table (a standalone node)
    cluster: tuple[tuple[str, bool | int | str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()  #: extra environment variables for the node
    #: ``[tls]`` keys and values; empty = no ``[tls]`` table (plaintext gRPC)
    tls: tuple[tuple[str, bool | int | str], ...] = ()


@dataclass
class NodeProc:
    spec: NodeSpec
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    config_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    earlier: list[subprocess.Popen[bytes]] = field(default_factory=list)  #: before respawns

    def respawn(self) -> None:
        """Start ``aqnode serve`` again on the same config (same port, same server_id),
        after the previous process has gone (a kill). Call it from the main thread (the
        child's PDEATHSIG follows the thread that forks it)."""
        assert self.config_path is not None
        self.earlier.append(self.proc)
        self.proc = _spawn_serve(self.config_path, self.log_path, self.env)

    def pids(self) -> list[int]:
        """The supervisor first, then every process under it (the shards)."""
        try:
            sup = psutil.Process(self.proc.pid)
            return [sup.pid, *(c.pid for c in sup.children(recursive=True))]
        except psutil.Error:
            return []

    def rss(self) -> dict[int, int]:
        """RSS in bytes per process of the node (supervisor first)."""
        out: dict[int, int] = {}
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                out[pid] = psutil.Process(pid).memory_info().rss
        return out


def node_config(directory: Path, redis_url: str, port: int, spec: NodeSpec) -> str:
    return (
        "\n".join(
            [
                f"handlers = [{quote(spec.handlers)}]",
                f"shards = {spec.shards}",
                f'listen = "127.0.0.1:{port}"',
                f"server_id = {quote(spec.server_id or 'bench-' + spec.name)}",
                f"data_dir = {quote(str(directory / 'data'))}",
                f"key_prefix = {quote(spec.key_prefix)}",
                "max_total_workers = 0",  # unbounded: the benchmark must not be refused
                "max_total_queue_depth = 0",
                f"shard_heartbeat_ms = {spec.heartbeat_ms}",
                "[redis]",
                f"url = {quote(redis_url)}",
                f"[entities.{spec.entity_type}]",
                f"worker_idle_timeout_ms = {spec.idle_timeout_ms}",
                "reply_timeout_ms = 600000",
                *(["[cluster]"] if spec.cluster else []),
                *(f"{key} = {_toml_value(value)}" for key, value in spec.cluster),
                *(["[tls]"] if spec.tls else []),
                *(f"{key} = {_toml_value(value)}" for key, value in spec.tls),
            ]
        )
        + "\n"
    )


def _toml_value(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return quote(value)


def _spawn_serve(config_path: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    launch = die_with_us()
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*launch.prefix, sys.executable, "-m", "aqnode", "serve", "--config", str(config_path)],
            cwd=config_path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the cleanup reaches every shard
            preexec_fn=launch.preexec_fn,
        )


@contextlib.contextmanager
def aqnode_serve(workdir: Path, redis_url: str, spec: NodeSpec) -> Iterator[NodeProc]:
    directory = workdir / f"node-{spec.name}"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = directory / "node.toml"
    config_path.write_text(node_config(directory, redis_url, port, spec))
    log_path = directory / "node.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(spec.env)
    proc = _spawn_serve(config_path, log_path, env)
    node = NodeProc(spec, proc, f"127.0.0.1:{port}", log_path, config_path, env)
    try:
        yield node
    finally:
        for earlier in node.earlier:  # killed ones (respawn): whatever is left of them
            _stop_group(earlier, 0.0)
        _stop_group(node.proc, STOP_TIMEOUT_S)


async def wait_ready(node: NodeProc, client_options: dict[str, Any] | None = None) -> Any:
    """Poll ``Client.status()`` until it answers and every shard is alive.
    ``client_options`` go to each ``Client`` (e.g. ``tls=Tls(...)`` for a TLS node).

    A fresh Client per attempt, so that the benchmark's own Client never saw a failed
    stream (at commit de78e83 such a Client kept a stale writer task that failed its
    next sends; fixed since, the precaution stays cheap).
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if node.proc.poll() is not None:
            raise SystemExit(
                f"bench: aqnode serve exited with {node.proc.returncode}:\n{tail(node.log_path)}"
            )
        try:
            async with Client(node.address, **(client_options or {})) as client:
                status = await client.status(timeout=2.0)
            if status.shards and all(s.alive for s in status.shards):
                return status
        except AqError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the node did not get ready:\n{tail(node.log_path)}")
        await asyncio.sleep(0.1)


async def settle(client: Client, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the node has no live message and no entity worker left (idle teardown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await client.status(timeout=5.0)
        if status.live_messages == 0 and all(s.workers == 0 for s in status.shards):
            return
        await asyncio.sleep(0.05)
    print("bench: warning: the node did not go idle between runs", file=sys.stderr)


async def wait_handled(client: Client, handled: int, timeout: float) -> Any:
    """Wait until the shards have handled ``handled`` messages in all (their counters since
    start) and no message is live; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = await client.status(timeout=10.0)
        if status.live_messages == 0 and sum(s.handled for s in status.shards) >= handled:
            return status
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: the node handled {sum(s.handled for s in status.shards)} of "
                f"{handled} messages in {timeout:.0f}s ({status.live_messages} live)"
            )
        await asyncio.sleep(0.1)
