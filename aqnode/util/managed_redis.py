"""The embedded redis-server a node supervises when its config has no ``[redis] url``.

Layout under ``data_dir/redis/``: ``redis.conf`` (rewritten at every start), ``redis.sock``
(or TCP on 127.0.0.1 when a port is given), ``redis.log``, the AOF directory, ``url`` (what
``aqnode`` CLI commands connect to) and ``lock`` (held while this node owns the directory).

Liveness: the child gets ``PR_SET_PDEATHSIG`` on Linux, so it receives SIGTERM when the node
dies, even by SIGKILL; SIGTERM makes redis fsync its AOF and exit. PDEATHSIG fires when the
*thread* that forked the child exits, so ``start()`` must run on the node's long-lived event
loop thread, never in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import quote

#: Linux <sys/prctl.h>
_PR_SET_PDEATHSIG = 1
#: seconds between readiness and exit probes
_POLL_INTERVAL = 0.02
#: seconds a redis left by a just-killed node gets to finish its SIGTERM shutdown
_ORPHAN_GRACE = 2.0
#: bytes; sun_path is 108 bytes on Linux including the terminating NUL
_MAX_UNIX_PATH = 107
_INSTALL_HINT = (
    "install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`, "
    "or run scripts/setup), or set [redis] url in node.toml to use an existing Redis"
)


def redis_dir_for(data_dir: Path) -> Path:
    """The directory under ``data_dir`` that holds the managed Redis."""
    return Path(data_dir).resolve() / "redis"


def unix_url(socket_path: Path) -> str:
    """A redis-py URL for a Unix socket (quoted: redis-py unquotes the path)."""
    return "unix://" + quote(str(socket_path))


def url_for(data_dir: Path) -> str:
    """The URL the CLI should use to reach the managed Redis of a node using ``data_dir``.

    A running node records its URL (TCP mode has no fixed address); without that record the
    default Unix socket is the answer, and connecting to it tells whether a node runs.
    """
    rdir = redis_dir_for(data_dir)
    with contextlib.suppress(FileNotFoundError):
        recorded = (rdir / "url").read_text().strip()
        if recorded:
            return recorded
    return unix_url(rdir / "redis.sock")


def _quote_conf(value: str) -> str:
    """A redis.conf string literal, so paths with spaces or quotes survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _load_prctl() -> Callable[..., int] | None:
    # Resolved in the parent: after fork only the call itself should run in the child.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    fn: Callable[..., int] = prctl
    return fn


_PRCTL = _load_prctl()


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM`` (util-linux) before the command, on Linux.

    Not a ``preexec_fn``: Python code between fork and exec can deadlock or crash in a
    process whose other threads (gRPC's) hold locks; setpriv sets the signal after exec.
    """
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


def _answers(unix_path: Path | None, port: int) -> bool:
    """Whether something accepts connections at the address (a sync, instant probe)."""
    family = socket.AF_UNIX if unix_path is not None else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(unix_path) if unix_path is not None else ("127.0.0.1", port))
        except OSError:
            return False
    return True


class ManagedRedis:
    """Start, watch and stop one redis-server child with AOF persistence under ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int = 0, executable: str = "redis-server") -> None:
        self.dir = redis_dir_for(data_dir)
        self.port = port
        self.executable = executable
        self.socket_path = self.dir / "redis.sock"
        self.log_path = self.dir / "redis.log"
        self.conf_path = self.dir / "redis.conf"
        self._url_path = self.dir / "url"
        self._lock_path = self.dir / "lock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0" if port > 0 else unix_url(self.socket_path)

    @property
    def pid(self) -> int | None:
        """The redis-server's pid, or None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self, timeout: float = 10.0) -> str:
        """Start redis-server and return its URL once it answers PING."""
        if self.is_running():
            raise RuntimeError(f"managed redis-server already running (pid {self.pid})")
        exe = shutil.which(self.executable)
        if exe is None:
            raise RuntimeError(f"{self.executable!r} is not on PATH; {_INSTALL_HINT}")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._acquire_lock()
        try:
            await self._clear_address()
            self._write_conf()
            self._spawn(exe)
            await self._wait_ready(timeout)
            self._url_path.write_text(self.url + "\n")
        except BaseException:
            # Also on cancellation: never leave a half-started child behind.
            self._kill_and_reap()
            self._release_lock()
            raise
        return self.url

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (redis fsyncs the AOF and exits), then SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(_POLL_INTERVAL)
        self._kill_and_reap()
        self._cleanup()

    def stop_sync(self, timeout: float = 5.0) -> None:
        """``stop`` for places without an event loop (atexit, a last-resort finally)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self._kill_and_reap()
        self._cleanup()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of redis.log (where startup errors and crashes show)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        # An flock, not a pid file: the kernel drops it when this process dies in any way.
        lock = self._lock_path.open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(
                f"another aqnode node is using {self.dir.parent} (lock {self._lock_path} is "
                "held); two nodes must not share one data_dir"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _clear_address(self) -> None:
        """Fail if a redis already serves our address; remove a stale socket file."""
        unix = self.socket_path if self.port == 0 else None
        if unix is not None and len(os.fsencode(unix)) > _MAX_UNIX_PATH:
            raise RuntimeError(
                f"Unix socket path {unix} is longer than {_MAX_UNIX_PATH} bytes; "
                "use a shorter data_dir or set a managed redis port"
            )
        # A node killed a moment ago leaves a redis that is still in its SIGTERM shutdown.
        deadline = time.monotonic() + _ORPHAN_GRACE
        while _answers(unix, self.port):
            if time.monotonic() >= deadline:
                where = unix if unix is not None else f"127.0.0.1:{self.port}"
                raise RuntimeError(
                    f"something already serves {where}: another node's redis-server, or "
                    "one left running; two nodes must not share one data_dir "
                    "(stop it or choose another data_dir/port)"
                )
            await asyncio.sleep(_POLL_INTERVAL * 5)
        if unix is not None:
            unix.unlink(missing_ok=True)

    def _write_conf(self) -> None:
        lines = [
            "daemonize no",
            f"dir {_quote_conf(str(self.dir))}",
            f"logfile {_quote_conf(str(self.log_path))}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',  # the AOF is the persistence; no RDB snapshots on top
        ]
        if self.port > 0:
            lines += ["bind 127.0.0.1", f"port {self.port}"]
        else:
            lines += [
                "port 0",
                f"unixsocket {_quote_conf(str(self.socket_path))}",
                "unixsocketperm 700",
            ]
        self.conf_path.write_text(
            "# Written by aqnode at every start of the managed Redis; edits are lost.\n"
            + "\n".join(lines)
            + "\n"
        )

    def _spawn(self, exe: str) -> None:
        prefix = _pdeathsig_prefix()
        # Fatal config errors go to stderr before redis opens its logfile: keep them there.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*prefix, exe, str(self.conf_path)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own process group so a terminal ^C reaches only the node, which drains
                # against a live Redis; PDEATHSIG still ends redis with the node. Without
                # PDEATHSIG, staying in the group is the safer fallback.
                process_group=0 if prefix else None,
            )

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"redis-server exited with status {code} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            reply = await self._ping()
            if reply == b"+PONG":
                return
            if reply:
                last = reply.decode("utf-8", "replace")
            # A server loading a large AOF is progressing, not stuck: let it finish.
            loading = reply is not None and reply.startswith(b"-LOADING")
            if time.monotonic() >= deadline and not loading:
                raise RuntimeError(
                    f"redis-server did not answer PING within {timeout}s (last: {last}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def _ping(self) -> bytes | None:
        """One PING; the reply line, or None when nothing accepts connections yet."""
        try:
            if self.port > 0:
                conn = asyncio.open_connection("127.0.0.1", self.port)
            else:
                conn = asyncio.open_unix_connection(str(self.socket_path))
            reader, writer = await asyncio.wait_for(conn, 1.0)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            return (await asyncio.wait_for(reader.readline(), 1.0)).rstrip(b"\r\n")
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _kill_and_reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _cleanup(self) -> None:
        if self._lock is None:
            return  # never owned the directory: its files may be another node's
        # After SIGKILL redis could not remove its socket; the URL record is stale either way.
        self._url_path.unlink(missing_ok=True)
        if self.port == 0:
            self.socket_path.unlink(missing_ok=True)
        self._release_lock()
