"""The supervisor's handle on one shard process: spawn, handshake, frames, exit.

A shard is a fresh interpreter (``python -m aqnode.shard``), never a fork of the serving
supervisor: gRPC does not survive ``fork()``. It gets one end of a socketpair as an
inherited file descriptor, so there is no socket path to race on or clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable

import psutil

from aqnode import ipc
from aqnode.util import proc as procutil
from aqnode.util.child import Child
from aqnode.wiretypes import MessageEntry

log = logging.getLogger("aqnode.supervisor")

HELLO_TIMEOUT_S = 15.0  #: seconds a fresh shard interpreter may take to say Hello
#: seconds a shard may take to import its handler modules, unless the config's
#: ``shard_start_timeout_ms`` says otherwise
READY_TIMEOUT_S = 60.0
RATE_SMOOTHING = 0.5  #: weight of the newest heartbeat in the handled-per-second average
READ_AFTER_EXIT_S = 1.0  #: seconds to finish reading a dead shard's last frames


class ShardBootFailed(Exception):
    """The shard cannot serve and will not by being started again: it said why (its
    handler modules, say), or it did not finish importing them in time, or it ended
    itself while importing them."""


class ShardLink:
    def __init__(
        self,
        index: int,
        config_bytes: bytes,
        shard_count: int,
        on_items: Callable[[int, list[ipc.ToSupervisor]], None],
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.index = index
        self._config_bytes = config_bytes
        self._shard_count = shard_count
        self._on_items = on_items
        self.ready_timeout_s = ready_timeout_s  #: the config's shard_start_timeout_ms
        self.process: Child | None = None
        self.channel: ipc.SupervisorEnd | None = None
        self.ready = False
        self.catalogue: list[MessageEntry] = []  #: what the shard handles (from Ready)
        self.exited = False  # the process is gone; its last frames are still being read
        #: every frame the shard wrote was read (a clean close, or a frame cut short by its
        #: death): only then does a missing ``Started`` prove a message never started
        self.read_all = False
        self.started_at = 0.0
        self.last_heartbeat = 0.0
        self.workers = 0
        self.queue_depth = 0
        self.handled = 0
        self.handled_at: float | None = None
        self.handled_per_s = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._ps: psutil.Process | None = None

    def ps(self) -> psutil.Process:
        """The shard as a psutil Process, kept so that CPU percentages span calls."""
        if self._ps is None or self._ps.pid != self.pid:
            self._ps = psutil.Process(self.pid)
        return self._ps

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Spawn the shard and wait until it has imported its handlers (``Ready``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = Child(
                [
                    sys.executable,
                    "-m",
                    "aqnode.shard",
                    "--fd",
                    str(theirs.fileno()),
                    "--index",
                    str(self.index),
                    "--parent",
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.started_at = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self.channel = ipc.supervisor_end(reader, writer)
        await self._handshake(self.channel)
        self.ready = True
        self.last_heartbeat = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read(self.channel))

    async def _handshake(self, channel: ipc.SupervisorEnd) -> None:
        """Hello within HELLO_TIMEOUT_S (a fresh interpreter), Ready within
        ``ready_timeout_s`` (the handler imports); a shard that overstays either is given
        up on. One that overstays the imports, or ends itself during them without saying
        why, is killed and raises `ShardBootFailed`: starting it again would do the same."""
        try:
            frame = await asyncio.wait_for(channel.receive(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"shard {self.index} said no Hello in {HELLO_TIMEOUT_S}s") from None
        if not frame or not isinstance(frame[0], ipc.Hello):
            raise ConnectionError(f"shard {self.index} closed before saying Hello")
        channel.send(
            ipc.Welcome(ipc.PROTOCOL_VERSION, self.index, self._shard_count, self._config_bytes)
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(channel.receive(), deadline - time.monotonic())
            except TimeoutError:
                self.kill()
                raise ShardBootFailed(
                    f"it had not finished importing its handler modules after "
                    f"{self.ready_timeout_s:g}s (shard_start_timeout_ms), so it was killed: "
                    "a handler module that blocks or loops while it is imported (a sleep, "
                    "a network call, a server started at module level) is the likely cause"
                ) from None
            if frame is None:
                raise await self._closed_before_ready()
            for item in frame:
                if isinstance(item, ipc.BootFailed):
                    raise ShardBootFailed(item.reason)
                if isinstance(item, ipc.Ready):
                    self.catalogue = item.catalogue
                    return

    async def _closed_before_ready(self) -> Exception:
        """What to raise for a shard that closed its socket after Welcome, before Ready.

        A handler module that fails to import is reported by the shard (``BootFailed``);
        a shard that just exits with the shard's own error codes (3, 4) said nothing to
        the node, and may have printed nothing either (``os._exit`` in a handler module).
        """
        code: int | None = None
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(self.process.wait(), READ_AFTER_EXIT_S)
        if code in (procutil.EXIT_BOOT_ERROR, procutil.EXIT_IMPORT_ERROR):
            return ShardBootFailed(
                f"it exited with code {code} while importing its handler modules, without "
                "telling the node why: a handler module that ends the process while it is "
                "imported (os._exit(), sys.exit() at module level) is the likely cause"
            )
        return ConnectionError(f"shard {self.index} exited before it was ready")

    async def _read(self, channel: ipc.SupervisorEnd) -> None:
        try:
            await channel.serve(self._frame)  # frames handled in data_received, in order
        except ipc.TruncatedFrame:
            self.read_all = True
        except ipc.ProtocolError as exc:
            log.error("shard %d sent a bad frame (%s); closing its socket", self.index, exc)
        else:
            self.read_all = True
        channel.close()

    def _frame(self, frame: list[ipc.ToSupervisor]) -> None:
        items: list[ipc.ToSupervisor] = []
        for item in frame:
            if isinstance(item, ipc.Heartbeat):
                self._heartbeat(item)
            elif self.exited and isinstance(item, ipc.Dispatch):
                continue  # asked by a shard that is gone: nobody could run it
            else:
                items.append(item)
        if items:
            try:
                self._on_items(self.index, items)
            except Exception:  # a bug of ours: log it, keep reading (outcomes follow)
                log.exception("shard %d: handling its frame failed", self.index)

    def _heartbeat(self, item: ipc.Heartbeat) -> None:
        now = time.monotonic()
        elapsed = now - self.last_heartbeat
        if self.handled_at is not None and elapsed > 0:
            rate = max(item.handled - self.handled, 0) / elapsed
            # An exponential average over a few heartbeats: steady, yet it follows load.
            self.handled_per_s = (
                rate
                if not self.handled_per_s
                else (RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * self.handled_per_s)
            )
        self.handled_at = now
        self.last_heartbeat = now
        self.workers, self.queue_depth, self.handled = item.workers, item.queue_depth, item.handled

    def send(self, item: ipc.ToShard) -> None:
        if self.channel is not None:
            # The first item of a loop iteration goes out at once (a lone message reaches
            # its shard a loop turn sooner); the rest of the tick's share a frame after it.
            self.channel.send_now(item)

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code (negative: killed by a signal)."""
        assert self.process is not None
        code = await self.process.wait()
        self.ready = False
        self.exited = True
        if self._reader is not None:
            # Read what the shard wrote before it died (an outcome may be in there).
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), READ_AFTER_EXIT_S)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # the reader's failure must not stop the restart
                log.exception("shard %d: reading its last frames failed", self.index)
            self._reader.cancel()
        if self.channel is not None:
            self.channel.close()
        return code

    async def stop(self, drain_timeout_ms: int) -> None:
        """Ask the shard to drain and exit; kill it if it overstays."""
        if self.process is None or self.process.returncode is not None:
            return
        self.send(ipc.Stop(drain_timeout_ms))
        try:
            await asyncio.wait_for(self.process.wait(), drain_timeout_ms / 1000 + 5)
        except TimeoutError:
            log.warning("shard %d did not exit after draining; killing it", self.index)
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
