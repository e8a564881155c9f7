"""The supervisor process: ``aqnode serve``.

One uvloop event loop. It owns the gRPC server, the write-ahead log in Redis, routing
and the shards' lifecycle; it never runs entity code (it imports the handler modules
only to know their messages and validate payloads). Signal handlers only record the
signal; the main loop acts on it. :meth:`Supervisor._reconcile` is the one place that
starts shards: it compares the wanted shards with the running ones, restarts crashed
shards with exponential backoff, and halts the node when a shard cannot start at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import psutil

from aqnode import __version__, errors, ipc
from aqnode.bus import Envelope, SendResult
from aqnode.cluster.member import GroupMember
from aqnode.cluster.membership import Membership
from aqnode.config import NodeConfig, encode_config
from aqnode.native import SOCKET_NAME, TCP_SCHEME, UNIX_SCHEME
from aqnode.supervisor.core import NodeCore
from aqnode.supervisor.grpc_api import AqNodeService
from aqnode.supervisor.live import Call
from aqnode.supervisor.metrics import NodeMetrics, serve_metrics
from aqnode.supervisor.native_api import NativeServer
from aqnode.supervisor.peer_api import AqPeerService
from aqnode.supervisor.registry import RegistryPublisher
from aqnode.supervisor.shards import READ_AFTER_EXIT_S, ShardBootFailed, ShardLink
from aqnode.supervisor.stop_bound import STOP_OVERRUN_S, StopBound
from aqnode.supervisor.tls import NodeTls
from aqnode.supervisor.validation import Validator
from aqnode.util import proc as procutil
from aqnode.util.backoff import doubling
from aqnode.util.data_dir import hold_data_dir
from aqnode.util.hostport import parse_host_port
from aqnode.util.managed_redis import ManagedRedis
from aqnode.util.redis_url import redacted
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from aqnode.wal import LogKeys, WriteAheadLog
from aqnode.wal.group import GroupStore
from aqnode.wal.keys import GroupKeys
from aqnode.wal.url import log_client, ping

log = logging.getLogger("aqnode.supervisor")

RESTART_BACKOFF_MIN_S = 0.1  #: seconds before the first restart of a crashed shard
RESTART_BACKOFF_MAX_S = 10.0  #: seconds; the backoff doubles up to this
STABLE_AFTER_S = 10.0  #: seconds a shard must live for its crash count to reset
#: a shard that fails to become ready this many times in a row halts the node; a shard
#: that was serving and died (a kill from outside, a handler's os._exit) never does
MAX_FAILED_STARTS = 5
SETTLE_AT_STOP_S = 3.0  #: seconds a stopping node waits for its last transitions to land


@dataclass
class ShardSlot:
    """One wanted shard: its current process (if any) and its crash history."""

    index: int
    link: ShardLink | None = None
    failed_starts: int = 0  # starts in a row that never became ready (these halt the node)
    crashes: int = 0  # deaths in a row of a serving shard that lived < STABLE_AFTER_S (backoff)
    next_start: float = 0.0
    restarts: int = 0


class Supervisor:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.shard_count = config.shard_count()
        self.slots = [ShardSlot(i) for i in range(self.shard_count)]
        self.data_dir = Path(config.data_dir)
        self.started = time.monotonic()
        self.server_id = ""
        self.redis_url = ""
        self.fatal: str | None = None
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = False
        self.dead_letters = 0  #: waiting in the dead-letter queue, as of the last cleanup
        self._served = False  # gRPC was up: a halt now is EXIT_HALTED, not EXIT_CANNOT_START
        self._stop_before_serving = False  # a signal came while the shards were starting
        self._watchers: set[asyncio.Task[None]] = set()  # one per running shard
        self._managed: ManagedRedis | None = None
        self._data_dir_lock: IO[bytes] | None = None
        self._redis: Any = None  # redis.asyncio.Redis, typed loosely: only wal/ imports redis
        self._server: grpc.aio.Server | None = None
        self.core: NodeCore | None = None
        self.membership: Membership | None = None  # cluster mode only
        self.member: GroupMember | None = None  # cluster mode: placement, peers, master
        self._metrics_server: asyncio.Server | None = None
        self._fenced_out = False  # declared dead by the group: stop without draining
        self._membership_task: asyncio.Task[None] | None = None
        self.tls: NodeTls | None = None  # [tls]: the gRPC port's and the peers' credentials
        self._native: NativeServer | None = None

    # ---- start ------------------------------------------------------------------------

    async def run(self) -> int:
        # Before anything starts; gRPC would also log lines of its own on a taken port.
        _check_port_free(self.config.listen)
        if self.config.native_listen is not None:
            _check_port_free(self.config.native_listen, "native_listen")
        if self.config.metrics_listen is not None:
            _check_port_free(self.config.metrics_listen, "metrics_listen")
        if self.config.tls is not None:
            self.tls = NodeTls(self.config.tls)  # a bad file: one line naming it, exit 2
        # Held until the process ends: a second node on this data_dir stops here.
        self._data_dir_lock = hold_data_dir(self.data_dir)
        try:
            self.server_id = self.config.server_id or _persistent_server_id(self.data_dir)
        except OSError as exc:
            raise errors.StartupError(
                f"data_dir {self.data_dir} cannot be used: reading or writing its server_id "
                f"file failed ({exc.strerror or exc})"
            ) from None
        await self._connect_redis()
        assert self._redis is not None
        # A cluster member joins before it touches its log: a live process that holds
        # this server id (and so this log) makes the start fail instead.
        await self._join_group()
        keys = LogKeys(self.config.key_prefix, self.server_id)
        wal = WriteAheadLog(
            self._redis, keys, entry_ttl_s=self.config.wal.entry_ttl_s, clock=time.time
        )
        try:
            await wal.start()
            # A new process (in cluster mode: joined afresh) owns its log: any fence left by
            # an adoption of an earlier process is lifted.
            await wal.unfence()
            await wal.register_node()
            entries = await wal.live_entries()
        except errors.RedisUnavailable as exc:
            raise errors.StartupError(f"reading the log at start failed: {exc.message}") from None
        self.core = NodeCore(self.config, Validator(), wal, self.shard_count)
        registry = self.core.registry = RegistryPublisher(self._redis, self.config, self.server_id)
        requeued, interrupted = await self.core.recover(entries)
        if self.membership is not None:
            self.member = GroupMember(
                self.membership,
                self.config,
                self._redis,
                self.core.submit,
                _adopted_call,
                self.core.reply_timeout_ms,
                None if self.tls is None else self.tls.peer_credentials(),
            )
            # What this node's log still holds runs here: it owns those entities.
            try:
                await self.member.router.claim(sorted({m.key for m in self.core.live.values()}))
            except errors.RedisUnavailable as exc:
                raise errors.StartupError(
                    f"taking fencing tokens at start failed: {exc.message}"
                ) from None
            for msg in self.core.live.values():
                msg.token = self.member.router.token(msg.key)
            self.core.placement = self.member
            self.core.on_fenced = self._fenced
            self.core.lapsed = self.membership.lapsed
            self.member.start()
        if requeued or interrupted:
            log.info(
                "recovered the log: %d enqueued messages will run, %d interrupted ones were "
                "dead-lettered or requeued",
                requeued,
                interrupted,
            )
        self._install_signals()
        loop = asyncio.get_running_loop()
        reconciler = loop.create_task(self._reconcile_loop())
        background = [
            loop.create_task(self._health_loop()),
            loop.create_task(self._cleanup_loop()),
            loop.create_task(self._stall_loop()),
            loop.create_task(registry.run()),  # publishes once the first shard is ready
        ]
        if self.membership is not None:
            # It keeps renewing the lease while the node drains (a lapse would end the
            # handlers that are finishing); _shutdown ends it just before leaving.
            self._membership_task = loop.create_task(self.membership.run())
        try:
            await self._wait_first_shards()
            if self.fatal is None and not self._stop_before_serving:
                await self._start_metrics()
                await self._start_grpc()
                await self._start_native()
                self._served = True
                log.info(
                    "aqnode %s ready: %s listening on %s, %d shards, redis %s",
                    __version__,
                    self.server_id,
                    self.config.listen,
                    self.shard_count,
                    redacted(self.redis_url),
                )
                await self._main_loop()
        finally:
            reconciler.cancel()
            for task in background:
                task.cancel()
            await self._shutdown()
        if self.fatal is not None:
            print(f"aqnode: {self.fatal}", file=sys.stderr, flush=True)
            return procutil.EXIT_HALTED if self._served else procutil.EXIT_CANNOT_START
        log.info("stopped")
        return procutil.EXIT_OK

    async def _connect_redis(self) -> None:
        if not self.config.wal.enabled:
            raise errors.StartupError(
                "[wal] enabled = false is not supported: aqnode's guarantees rest on the "
                "write-ahead log; remove the key or set it to true"
            )
        url = self.config.redis.url
        if url is None:
            self._managed = ManagedRedis(self.data_dir)
            try:
                url = await self._managed.start()
            except (RuntimeError, OSError) as exc:
                raise errors.StartupError(f"the node's own Redis did not start: {exc}") from None
        self.redis_url = url
        redis_cfg = self.config.redis
        try:
            self._redis = log_client(
                url,
                socket_timeout_s=redis_cfg.socket_timeout_ms / 1000,
                connect_timeout_s=redis_cfg.connect_timeout_ms / 1000,
            )
        except ValueError as exc:
            raise errors.StartupError(
                f"[redis] url {redacted(url)!r} cannot be used: {exc}"
            ) from exc
        deadline = time.monotonic() + redis_cfg.start_timeout_ms / 1000
        said = False
        while True:
            try:
                await ping(self._redis, redis_cfg.connect_timeout_ms / 1000)
                return
            except errors.RedisUnavailable as exc:
                if time.monotonic() > deadline:
                    raise errors.StartupError(
                        f"Redis at {redacted(url)} does not answer after "
                        f"{redis_cfg.start_timeout_ms} ms "
                        f"({exc.message}); start it, or fix [redis] url"
                    ) from None
                if not said:
                    log.warning("waiting for Redis at %s (%s)", redacted(url), exc.message)
                    said = True
                await asyncio.sleep(0.2)

    async def _join_group(self) -> None:
        cluster = self.config.cluster
        if cluster is None or not cluster.enabled:
            return
        store = GroupStore(
            self._redis, GroupKeys(self.config.key_prefix, self.config.service_group)
        )
        address = cluster.advertised or self.config.listen
        self.membership = Membership(store, cluster, self.server_id, address, self._halt)
        self.membership.declared_dead = self._fenced
        self.membership.lease_lost = self._lease_lost
        self.membership.lease_back = self._lease_back
        self.membership.lease_renewed = self._send_lease
        try:
            await self.membership.join()
        except errors.RedisUnavailable as exc:
            raise errors.StartupError(f"joining the service group failed: {exc.message}") from None

    async def _start_grpc(self) -> None:
        assert self.core is not None
        # Room for one payload (or reply) at its limit plus a batch of ordinary ones; a
        # larger payload gets PAYLOAD_TOO_LARGE from the core, not a transport error.
        slack = 64 * 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.max_payload_bytes + slack),
                ("grpc.max_send_message_length", self.config.max_reply_bytes + slack),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_AqNodeServicer_to_server(  # type: ignore[no-untyped-call]
            AqNodeService(self.core, self.status, self.config.auth_token), server
        )
        if self.member is not None:
            pb_grpc.add_AqPeerServicer_to_server(  # type: ignore[no-untyped-call]
                AqPeerService(self.member, self.config.auth_token), server
            )
        try:
            if self.tls is None:
                server.add_insecure_port(self.config.listen)
            else:
                server.add_secure_port(self.config.listen, self.tls.server_credentials())
        except RuntimeError as exc:
            raise errors.StartupError(f"cannot listen on {self.config.listen}: {exc}") from exc
        await server.start()
        self._server = server

    async def _start_native(self) -> None:
        """The native protocol (the Python client's fast path) on the node's Unix socket,
        and on ``native_listen`` if set."""
        assert self.core is not None
        native = self._native = NativeServer(
            self.core,
            self.status,
            self.server_id,
            self.config.auth_token,
            self.config.max_payload_bytes + 64 * 1024 * 1024,
        )
        path = self.data_dir / SOCKET_NAME
        # A plaintext socket next to a TLS port would let local clients skip the
        # client-certificate check: with [tls], native_listen (TLS) or gRPC only.
        if self.tls is None:
            try:
                await native.start_unix(path)
            except OSError as exc:  # a data_dir path too long for a Unix socket, say
                log.warning(
                    "no native Unix socket at %s (%s): local clients use gRPC or native_listen",
                    path,
                    exc.strerror or exc,
                )
        if self.config.native_listen is not None:
            host, port = parse_host_port(self.config.native_listen, allow_zero=True)
            context = None if self.tls is None else self.tls.ssl_context()
            try:
                await native.start_tcp(host, port, context)
            except OSError as exc:
                raise errors.StartupError(
                    f"cannot listen on native_listen {self.config.native_listen}: "
                    f"{exc.strerror or exc}"
                ) from exc

    async def _start_metrics(self) -> None:
        """Register the gauges and, with ``metrics_listen``, serve /metrics over HTTP."""
        assert self.core is not None
        core = self.core
        metrics = core.metrics
        metrics.add_gauge(
            "aqnode_workers",
            "Entity workers per shard.",
            ("shard",),
            lambda: [((str(s.index),), float(s.link.workers if s.link else 0)) for s in self.slots],
        )
        metrics.add_gauge(
            "aqnode_queue_depth",
            "Messages queued or running per shard.",
            ("shard",),
            lambda: [
                ((str(s.index),), float(s.link.queue_depth if s.link else 0)) for s in self.slots
            ],
        )
        metrics.add_gauge(
            "aqnode_live_messages",
            "Messages enqueued or dispatched, not finished.",
            (),
            lambda: [((), float(len(core.live)))],
        )
        metrics.add_gauge(
            "aqnode_dead_letters",
            "Dead letters waiting in this node's queue (refreshed every cleanup interval).",
            (),
            lambda: [((), float(self.dead_letters))],
        )
        metrics.add_gauge(
            "aqnode_redis_up",
            "1 while Redis answers the health check.",
            (),
            lambda: [((), 1.0 if core.redis_ok else 0.0)],
        )
        if self.member is not None:
            _cluster_metrics(metrics, self.member)
        if self.config.metrics_listen is None:
            return
        try:
            self._metrics_server = await serve_metrics(self.config.metrics_listen, metrics.render)
        except OSError as exc:
            raise errors.StartupError(str(exc)) from exc

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._events.put_nowait, sig.name)
        if self.tls is not None:
            loop.add_signal_handler(signal.SIGHUP, self.tls.reload)

    # ---- run --------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        while True:
            event = await self._events.get()
            if event in ("SIGTERM", "SIGINT"):
                log.info(
                    "%s: draining (running handlers get %d ms)", event, self.config.drain_timeout_ms
                )
                return
            if event == "fatal":
                return

    def _lease_lost(self) -> None:
        """Self-fencing: the group may soon declare this node dead and move its entities.
        No handler starts from now; the shards running one are killed (their messages
        are interrupted: fail if interrupted) before anyone else may run those entities."""
        if self.core is None:
            return
        self.core.lapsed = True
        for index in sorted(self.core.running_shards()):
            link = self.slots[index].link if index < len(self.slots) else None
            if link is not None:
                log.warning("lease lapsed: killing shard %d, which runs handlers", index)
                link.kill()

    def _send_lease(self, until: float) -> None:
        for slot in self.slots:
            if slot.link is not None and slot.link.ready:
                slot.link.send(ipc.Lease(until))

    def _lease_back(self) -> None:
        if self.core is not None:
            self.core.lapsed = False

    def _fenced(self, reason: str = "") -> None:
        """Declared dead, entities moved: stop, and end running handlers at once (their
        messages were interrupted by the node that adopted the log; fail if interrupted)."""
        self._fenced_out = True
        self._halt(
            reason
            or "the group declared this node dead (its membership lapsed) and moved its "
            "entities to other nodes; stopping (restart it to rejoin)"
        )

    def _halt(self, reason: str) -> None:
        self.fatal = reason
        self._events.put_nowait("fatal")
        self._wake.set()

    async def _wait_first_shards(self) -> None:
        while self.fatal is None and not all(s.link and s.link.ready for s in self.slots):
            self._wake.set()
            try:
                event = await asyncio.wait_for(self._events.get(), 0.05)
            except TimeoutError:
                continue
            if event in ("SIGTERM", "SIGINT"):
                log.info("%s while starting: stopping", event)
                self._stop_before_serving = True
            return  # a signal or a fatal error during start

    async def _reconcile_loop(self) -> None:
        while not self._stopping:
            try:
                await self._reconcile()
            except Exception:  # the one place that restarts shards must outlive any bug
                log.exception("starting shards failed; trying again")
                await asyncio.sleep(RESTART_BACKOFF_MIN_S)
            self._wake.clear()
            now = time.monotonic()
            due = [s.next_start - now for s in self.slots if s.link is None]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(min(due), 0.01) if due else None)

    async def _reconcile(self) -> None:
        """Start every wanted shard that is not running and is due; the only place that does."""
        now = time.monotonic()
        for slot in self.slots:
            if (
                slot.link is None
                and slot.next_start <= now
                and not self._stopping
                and self.fatal is None
            ):
                await self._start_shard(slot)

    async def _start_shard(self, slot: ShardSlot) -> None:
        assert self.core is not None
        core = self.core
        link = ShardLink(
            slot.index,
            encode_config(self.config),
            self.shard_count,
            core.on_shard_items,
            self.config.shard_start_timeout_ms / 1000,
        )
        slot.link = link
        try:
            await link.start()
        except ShardBootFailed as exc:
            code = await link.wait() if link.process is not None else None
            slot.link = None
            self._halt(f"shard {slot.index} cannot serve: {exc}")
            return
        except (ConnectionError, TimeoutError, OSError, ipc.ProtocolError) as exc:
            link.kill()
            code = await link.wait() if link.process is not None else None
            reason = f"shard {slot.index} failed to start ({exc}; exit code {code})"
            log.error("%s", reason)
            self._start_failed(slot, reason, code)
            return
        slot.failed_starts = 0
        if not core.validator.entries:
            core.learn(link.catalogue)  # the first shard ready tells what the node handles
        if self.membership is not None:  # before any message it could start
            link.send(ipc.Lease(self.membership.lease_until_mono))
        core.shard_up(slot.index, link.send)
        watcher = asyncio.get_running_loop().create_task(self._watch(slot, link))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, slot: ShardSlot, link: ShardLink) -> None:
        code = await link.wait()
        assert self.core is not None
        # Stopping too: what the shard started is interrupted now, and what it was given
        # but never started goes back to `enqueued` for the next start.
        self.core.shard_down(slot.index, read_to_the_end=link.read_all)
        if self._stopping:
            return
        lived = time.monotonic() - link.started_at
        slot.crashes = 1 if lived >= STABLE_AFTER_S else slot.crashes + 1
        log.error(
            "shard %d (pid %s) exited with code %s after %.1fs", slot.index, link.pid, code, lived
        )
        self._restart_later(slot, slot.crashes)

    def _start_failed(self, slot: ShardSlot, reason: str, code: int | None) -> None:
        slot.failed_starts += 1
        if code in (procutil.EXIT_IMPORT_ERROR, procutil.EXIT_BOOT_ERROR):
            slot.link = None
            self._halt(f"{reason}: the shard cannot start; see its error above")
            return
        if slot.failed_starts >= MAX_FAILED_STARTS:
            slot.link = None
            self._halt(f"{reason}, {slot.failed_starts} times in a row; stopping the node")
            return
        self._restart_later(slot, slot.failed_starts)

    def _restart_later(self, slot: ShardSlot, attempt: int) -> None:
        slot.link = None
        delay = doubling(RESTART_BACKOFF_MIN_S, RESTART_BACKOFF_MAX_S, attempt)
        slot.next_start = time.monotonic() + delay
        slot.restarts += 1
        log.warning("restarting shard %d in %.1fs", slot.index, delay)
        self._wake.set()

    # ---- Redis health and cleanup ---------------------------------------------------------

    async def _health_loop(self) -> None:
        """PING Redis; after ``health_failure_threshold`` misses, reject new work until it
        answers again (safety over liveness: nothing is buffered meanwhile)."""
        assert self._redis is not None and self.core is not None
        interval = self.config.redis.health_check_ms / 1000
        failures = 0
        while True:
            try:
                await ping(self._redis, interval * 2)
            except errors.RedisUnavailable as exc:
                failures += 1
                if failures >= self.config.redis.health_failure_threshold and self.core.redis_ok:
                    log.error("Redis stopped answering (%s): rejecting new work", exc.message)
                    self.core.redis_ok = False
                    # Calls waiting on the log are answered now, not at the socket time-out.
                    self.core.wal.abandon_in_flight("the health check gave Redis up")
                    if self.member is not None:
                        self.member.redis_health(f"Redis does not answer: {exc.message}")
            else:
                if not self.core.redis_ok:
                    log.info("Redis answers again: taking new work")
                    if self.member is not None:
                        self.member.redis_health(None)
                self.core.redis_ok = True
                failures = 0
                if self.core.uncertain and (adopted := await self.core.adopt_uncertain()):
                    log.warning(
                        "%d messages whose enqueue failed on a broken Redis connection had "
                        "landed in the log after all; they will run",
                        adopted,
                    )
            await asyncio.sleep(interval)

    async def _stall_loop(self) -> None:
        """Kill a shard whose event loop stopped sending heartbeats (a handler blocking it);
        the watcher then interrupts its messages and restarts it."""
        limit = self.config.shard_stall_timeout_ms / 1000
        if not limit:
            return
        while True:
            await asyncio.sleep(min(limit / 4, 1.0))
            now = time.monotonic()
            for slot in self.slots:
                link = slot.link
                if link is not None and link.ready and now - link.last_heartbeat > limit:
                    log.error(
                        "shard %d (pid %s) sent no heartbeat for %.1fs: its event loop is "
                        "blocked; killing it",
                        slot.index,
                        link.pid,
                        now - link.last_heartbeat,
                    )
                    link.kill()
                    link.ready = False

    async def _cleanup_loop(self) -> None:
        """Evict terminal entries once their idempotency window has passed."""
        assert self.core is not None
        wal, window = self.core.wal, self.config.wal.idempotency_window_s
        while True:
            await asyncio.sleep(self.config.wal.cleanup_interval_ms / 1000)
            if not self.core.redis_ok:
                continue
            try:
                while await wal.cleanup(time.time() - window) > 0:
                    pass
                self.dead_letters = await wal.dead_letter_count()
            except errors.RedisUnavailable as exc:
                log.warning("log cleanup failed (%s); will try again", exc)

    # ---- stop -------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._stopping = True
        bound = StopBound(
            self.config.drain_timeout_ms / 1000 + STOP_OVERRUN_S,
            asyncio.get_running_loop(),
            lambda: [s.link.pid for s in self.slots if s.link is not None and s.link.pid],
        )
        bound.start()
        try:
            await self._stop_steps(bound)
        finally:
            bound.cancel()

    async def _stop_steps(self, bound: StopBound) -> None:
        if self.core is not None:
            bound.at("writing the log's last commits")
            self.core.draining = True
            # Commits in flight deliver before Stop: a message already written `dispatched`
            # reaches its shard, which runs it while draining, not after.
            await self.core.wal.flush()
        links = [s.link for s in self.slots if s.link is not None]
        # A second SIGINT/SIGTERM while draining: stop now (what runs is interrupted and
        # dead-lettered at the next start: fail if interrupted).
        impatient = asyncio.get_running_loop().create_task(self._kill_on_second_signal(links))
        try:
            bound.at("draining the shards")
            if self._fenced_out:
                for link in links:
                    link.kill()
            else:
                await asyncio.gather(*(link.stop(self.config.drain_timeout_ms) for link in links))
        finally:
            impatient.cancel()
        if self._watchers:  # each reads its shard's last frames, then shard_down
            bound.at("reading the shards' last frames")
            await asyncio.wait(set(self._watchers), timeout=READ_AFTER_EXIT_S + 1)
        if self.core is not None:
            bound.at("waiting for the last transitions to reach the log")
            await self.core.settled(SETTLE_AT_STOP_S)
            bound.at("closing the log")
            await self.core.wal.close()
            self.core.abandon_waiters()
        if self.membership is not None:
            if self._membership_task is not None:
                self._membership_task.cancel()
                await asyncio.gather(self._membership_task, return_exceptions=True)
            self.membership.stop_lease()
            bound.at("leaving the group")
            await self.membership.leave()
        if self.member is not None:
            bound.at("closing the connections to peers")
            await self.member.close()
        if self._server is not None:
            bound.at("stopping the gRPC server")
            await self._server.stop(grace=1.0)
        if self._native is not None:
            bound.at("closing the native protocol's connections")
            await self._native.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._redis is not None:
            bound.at("closing the Redis client")
            await self._redis.aclose()
        if self._managed is not None:
            bound.at("stopping the managed Redis")
            await self._managed.stop()

    async def _kill_on_second_signal(self, links: list[ShardLink]) -> None:
        while True:
            event = await self._events.get()
            if event in ("SIGTERM", "SIGINT"):
                break
        log.warning(
            "%s again: stopping now; running handlers are interrupted (their messages are "
            "dead-lettered when the node starts again)",
            event,
        )
        for link in links:
            link.kill()

    # ---- status -----------------------------------------------------------------------

    def status(self) -> pb.StatusReply:
        shards = []
        for slot in self.slots:
            link = slot.link
            info = pb.ShardStatus(index=slot.index, restarts=slot.restarts)
            if link is not None and link.pid is not None:
                info.pid = link.pid
                info.alive = link.ready
                info.handled_per_s = link.handled_per_s
                info.workers, info.queue_depth, info.handled = (
                    link.workers,
                    link.queue_depth,
                    link.handled,
                )
                try:
                    proc = link.ps()
                    info.rss_bytes = proc.memory_info().rss
                    info.cpu_percent = proc.cpu_percent(interval=None)  # since the last call
                except psutil.Error:
                    info.alive = False
            shards.append(info)
        role, master, epoch, members = "standalone", self.server_id, 0, []
        native = self._native or _NO_NATIVE
        if self.membership is not None:
            state = self.membership.state
            role, master, epoch = self.membership.role, state.master, state.epoch
            members = [
                pb.Member(server_id=m.server_id, address=m.address, alive=m.alive, role=m.role)
                for m in state.members
            ]
        return pb.StatusReply(
            server_id=self.server_id,
            service_group=self.config.service_group,
            listen=self.config.listen,
            role=role,
            master=master,
            epoch=epoch,
            members=members,
            pid=os.getpid(),
            uptime_s=time.monotonic() - self.started,
            shards=shards,
            live_messages=len(self.core.live) if self.core else 0,
            version=__version__,
            native_address=f"{TCP_SCHEME}{native.tcp_address}" if native.tcp_address else "",
            native_socket=f"{UNIX_SCHEME}{native.socket_path}" if native.socket_path else "",
        )


class _NoNative:
    tcp_address = ""
    socket_path = None


_NO_NATIVE = _NoNative()


def _adopted_call(
    envelope: Envelope, reply: Callable[[SendResult], None], last: bool, token: int
) -> Call:
    return Call(envelope, False, 0, reply, adopted=True, adopted_last=last, fencing_token=token)


def _cluster_metrics(metrics: NodeMetrics, member: GroupMember) -> None:
    router, master, state = member.router, member.master, member.state
    metrics.add_gauge(
        "aqnode_cluster_epoch",
        "The group's epoch as this node sees it.",
        (),
        lambda: [((), float(state().epoch))],
    )
    metrics.add_gauge(
        "aqnode_cluster_is_master",
        "1 on the group's master.",
        (),
        lambda: [((), 1.0 if state().master == member.server_id else 0.0)],
    )
    metrics.add_gauge(
        "aqnode_cluster_owned_entities",
        "Entities this node owns.",
        (),
        lambda: [((), float(len(router.owned)))],
    )
    metrics.add_gauge(
        "aqnode_cluster_assigned_entities",
        "Entities in the master's assignment table (0 elsewhere).",
        (),
        lambda: [((), float(len(master.table)) if master.table is not None else 0.0)],
    )
    metrics.add_total(
        "aqnode_cluster_forwarded_total",
        "Calls forwarded to the node that owns their entity.",
        (),
        lambda: [((), float(router.forwarded))],
    )
    metrics.add_total(
        "aqnode_cluster_petitioned_total",
        "Entities this node asked the master about.",
        (),
        lambda: [((), float(router.petitioned))],
    )
    metrics.add_total(
        "aqnode_cluster_rebuilds_total",
        "Assignment tables this node rebuilt as master.",
        (),
        lambda: [((), float(master.rebuilds))],
    )
    metrics.add_total(
        "aqnode_cluster_adoptions_total",
        "Dead members' logs this node adopted as master.",
        (),
        lambda: [((), float(master.adoptions))],
    )
    metrics.add_gauge(
        "aqnode_cluster_peer_circuit_open", "1 while calls to a peer fail fast.", ("peer",),
        lambda: [((sid,), 0.0 if usable else 1.0) for sid, usable in member.peers.health()],
    )  # fmt: skip


def _check_port_free(listen: str, key: str = "listen") -> None:
    host, port = parse_host_port(listen, allow_zero=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            hint = (
                "is another node (or program) using that port?"
                if exc.errno in (errno.EADDRINUSE, errno.EACCES)
                else "is that an address of this host?"
            )
            raise errors.StartupError(
                f"cannot listen on {listen}: {exc.strerror or exc}; {hint} Change `{key}` "
                "in the config"
            ) from None


def _persistent_server_id(data_dir: Path) -> str:
    """A node id generated once and kept in data_dir, so a restart finds its own log."""
    path = data_dir / "server_id"
    if path.exists():
        return path.read_text().strip()
    server_id = f"node-{secrets.token_hex(4)}"
    path.write_text(server_id + "\n")
    return server_id


def serve(config: NodeConfig) -> int:
    """Run a node until SIGTERM/SIGINT; the process's exit code."""
    logging.basicConfig(
        level=logging.DEBUG if config.verbose else logging.INFO,
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    supervisor = Supervisor(config)
    try:
        return procutil.run(supervisor.run())
    except errors.StartupError as exc:
        print(f"aqnode: {exc}", file=sys.stderr, flush=True)
        return procutil.EXIT_CANNOT_START
