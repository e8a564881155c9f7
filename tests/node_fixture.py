"""Real ``aqnode serve`` processes for tests, cleaned up by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from aqnode.client import SyncClient, Tls
from aqnode.errors import AqError
from tests.redis_fixture import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
NODE_ID = "test-node"


@dataclass
class Node:
    address: str
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    redis_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    tls: Tls | None = None  #: how clients speak to it ([tls]: its CA, and its certificate)
    earlier: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def respawn(self) -> None:
        """Start the node again with the same config (after a kill or a stop)."""
        self.earlier.append(self.proc)
        self.proc, _ = spawn(self.config_path, self.redis_url, self.env)
        wait_ready(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> Any:
        with self.client() as client:
            return client.status(timeout=2.0)

    def shard_pids(self) -> list[int]:
        return [s.pid for s in self.status().shards]

    def client(self) -> SyncClient:
        return SyncClient(self.address, auth_token=self.token, tls=self.tls)

    def wait_exit(self, timeout: float) -> int:
        """The node's exit code once it has exited; if it has not within ``timeout``, a
        failure that shows its log (where a stop hangs, say)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the node (pid {self.proc.pid}) did not exit within {timeout:g} s; its log:\n"
                f"{self.log()[-20000:]}"
            ) from None

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def write_config(path: Path, redis_url: str | None, port: int, **overrides: Any) -> Path:
    settings: dict[str, Any] = {
        "handlers": ["tests.handlers.testkit"],
        "shards": 2,
        "listen": f"127.0.0.1:{port}",
        "server_id": NODE_ID,
        "data_dir": str(path.parent / "data"),
        "shard_heartbeat_ms": 100,
    }
    tables: dict[str, dict[str, Any]] = {}
    if redis_url is not None:
        tables["redis"] = {"url": redis_url}
    for key, value in overrides.items():
        if isinstance(value, dict):
            tables.setdefault(key, {}).update(value)
        else:
            settings[key] = value
    lines = [f"{k} = {_toml(v)}" for k, v in settings.items()]
    for table, values in tables.items():
        if all(isinstance(v, dict) for v in values.values()):
            for sub, subvalues in values.items():
                lines.append(f"[{table}.{sub}]")
                lines += [f"{k} = {_toml(v)}" for k, v in subvalues.items()]
        else:
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def node_env(redis_url: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if redis_url:
        env["AQ_TEST_REDIS_URL"] = redis_url
    return env


def spawn(
    config_path: Path, redis_url: str | None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = config_path.parent / "node.log"
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aqnode", "serve", "--config", str(config_path)],
        cwd=config_path.parent,
        env=node_env(redis_url, extra_env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: cleanup reaches every shard
    )
    log_file.close()
    return proc, log_path


def wait_ready(node: Node, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if node.proc.poll() is not None:
            raise AssertionError(f"aqnode serve exited with {node.proc.returncode}:\n{node.log()}")
        try:
            status = node.status()
        except AqError:
            return False
        return all(s.alive for s in status.shards)

    wait_for(ready, timeout=timeout, interval=0.05, message=f"node not ready:\n{node.log()}")


def kill_group(proc: subprocess.Popen[bytes], children: list[int]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def running_node(
    tmp_path: Path, redis_url: str | None, env: dict[str, str] | None = None, **overrides: Any
) -> Iterator[Node]:
    """Start a node on ``redis_url`` (None: its own managed Redis), yield it, then clean up."""
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = write_config(tmp_path / "node.toml", redis_url, port, **overrides)
    proc, log_path = spawn(config_path, redis_url, env)
    node = Node(f"127.0.0.1:{port}", proc, config_path, log_path, redis_url, dict(env or {}))
    node.token = overrides.get("auth_token")
    if tls := overrides.get("tls"):
        mutual = tls.get("require_client_cert", False)
        node.tls = Tls(
            tls.get("ca_file"),
            tls["cert_file"] if mutual else None,
            tls["key_file"] if mutual else None,
        )
    try:
        wait_ready(node)
        yield node
    finally:
        for p in [*node.earlier, node.proc]:
            children: list[int] = []
            with contextlib.suppress(psutil.Error):
                children = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(15)
            kill_group(p, children)


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie left for init to reap counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def elapsed(start: float) -> float:
    return time.monotonic() - start
