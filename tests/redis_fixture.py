"""A real redis-server for the whole test session, and polling helpers for tests.

One server per session on a free TCP port with its own directory (logs stay there for
debugging). Fault tests may ``stop()`` it and ``start()`` it again on the same port; the
``redis_url`` fixture brings it back and flushes it before every test. The server dies with
the session: a finalizer, an atexit hook, and on Linux PR_SET_PDEATHSIG for when pytest
itself is killed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

#: attempts with a fresh port when another process grabs the one we picked
_PORT_ATTEMPTS = 5


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail the test.

    The predicate is always evaluated once more after the deadline, so a slow last sleep
    never turns a success into a failure. Exceptions from the predicate propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout}s)")
        time.sleep(interval)


@overload
async def async_wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def async_wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def async_wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition not met",
) -> Any:
    """``wait_for`` inside an event loop; the predicate may be sync or return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout}s)")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port that was free a moment ago (callers must retry if they lose the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_conf(value: str) -> str:
    """A redis.conf string literal (temporary paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pdeathsig_prefix() -> list[str]:
    # Kept apart from aqnode.util.managed_redis so an import error in the package under test
    # cannot take the test infrastructure down with it. setpriv, not a preexec_fn: Python
    # code between fork and exec crashes now and then in a process with gRPC threads.
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


class RedisServer:
    """One redis-server child on 127.0.0.1; ``port`` is kept across restarts."""

    def __init__(self, directory: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server is not on PATH; the tests need a real one. Install it with "
                "`apt-get install redis-server` (or `brew install redis`), or run scripts/setup",
                pytrace=False,
            )
        self.executable = exe
        self.dir = directory
        self.port = 0
        self.log_path = directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._keep_data = False
        self.extra_conf: list[str] = []  #: more redis.conf lines (a cluster node's, say)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the process lives (also when frozen)."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new sync client (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port and directory) and wait until it serves.

        Call it from the main thread: PDEATHSIG fires when the forking *thread* exits.
        """
        if self.is_running():
            return
        if not self._keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self._keep_data = False
        deadline = time.monotonic() + timeout
        first = self.port == 0
        for _ in range(_PORT_ATTEMPTS if first else 1):
            if first:
                self.port = free_port()
            if self._start_on_port(deadline, retry_bind=not first):
                return
        raise AssertionError(f"redis-server could not bind a free port; log:\n{self.log_tail()}")

    def stop(self, *, persist: bool = False, timeout: float = 10.0) -> None:
        """Stop the server. Default: SIGKILL, a crash that loses all data.

        ``persist=True`` does SHUTDOWN SAVE instead, so the next ``start()`` has the data.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if persist:
            self.thaw()
            self._shutdown_save(timeout)
            proc.wait(timeout)
            self._keep_data = True
        else:
            proc.kill()
            proc.wait(timeout)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung Redis)."""
        if self._proc is not None and self.is_running():
            self._proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._frozen and self._proc is not None and self.is_running():
            self._proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def ensure_running(self) -> None:
        self.thaw()
        self.start()

    def flush(self) -> None:
        """Empty every database and the Lua script cache."""
        with self.client() as client:
            client.flushall()
            client.script_flush()

    def close(self) -> None:
        """Kill the server for good; idempotent, safe from atexit."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------------

    def _start_on_port(self, deadline: float, *, retry_bind: bool) -> bool:
        """Start on ``self.port``; False if the port was taken (and ``retry_bind`` is off)."""
        while True:
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            if self._wait_ready(deadline):
                return True
            new_log = self._log_since(log_offset)
            if "Address already in use" not in new_log:
                code = self._proc.returncode if self._proc is not None else None
                raise AssertionError(
                    f"redis-server failed to start (exit status {code}); log:\n{new_log}"
                )
            if not retry_bind:
                return False
            if time.monotonic() >= deadline:
                raise AssertionError(f"port {self.port} stayed taken; log:\n{new_log}")
            time.sleep(0.05)

    def _spawn(self) -> None:
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "daemonize no",
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {_quote_conf(str(self.dir))}",
                    f"logfile {_quote_conf(str(self.log_path))}",
                    'save ""',
                    "appendonly no",
                    "dbfilename dump.rdb",  # written only by stop(persist=True)
                    *self.extra_conf,
                ]
            )
            + "\n"
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*_pdeathsig_prefix(), self.executable, str(conf)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _wait_ready(self, deadline: float) -> bool:
        """True once our process answers; False if it exited; raises at the deadline."""
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                return False
            if self._answers_as(proc.pid):
                return True
            if time.monotonic() >= deadline:
                self.close()
                raise AssertionError(
                    f"redis-server did not answer in time; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _answers_as(self, pid: int) -> bool:
        # Check the pid: another process that took our port must not pass for our server.
        # No retries: redis-py 8 retries a refused connection for seconds by default.
        no_retry = Retry(NoBackoff(), 0)
        try:
            with self.client(
                socket_connect_timeout=0.5, socket_timeout=1.0, retry=no_retry
            ) as client:
                info = client.info("server")
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return bool(info.get("process_id") == pid)

    def _shutdown_save(self, timeout: float) -> None:
        # A raw socket: redis-py retries a command whose connection drops, and a successful
        # SHUTDOWN always drops it, which costs seconds of backoff.
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
            reply = b"".join(iter(lambda: sock.recv(4096), b""))
        if reply:  # success closes the connection without a reply
            raise AssertionError(f"SHUTDOWN SAVE failed: {reply!r}")

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(FileNotFoundError), self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
        return ""


@contextlib.contextmanager
def session_redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started server that is killed on exit, and at interpreter exit as a fallback."""
    server = RedisServer(directory)
    atexit.register(server.close)
    try:
        server.start()
        yield server
    finally:
        server.close()
        atexit.unregister(server.close)
