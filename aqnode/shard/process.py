"""A shard process: one uvloop event loop running the entity workers of its slice.

Started by the supervisor as a fresh interpreter (``python -m aqnode.shard``) with one
end of a socketpair. Threading: handlers run on the loop, plain ``def`` handlers on the
loop's default thread pool. Liveness: the shard sends a ``Heartbeat`` from its loop
every ``shard_heartbeat_ms`` (a stalled loop shows); it exits when the supervisor's
socket closes, and the kernel kills it if the supervisor dies (PDEATHSIG). The shard
never talks to Redis: every durable step goes through the supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import traceback

from aqnode import errors, ipc
from aqnode.catalogue import (
    Catalogue,
    build_catalogue,
    check_config_against,
    import_handler_modules,
)
from aqnode.config import NodeConfig, decode_config
from aqnode.shard.bus import ShardBus
from aqnode.shard.worker import WorkerPool
from aqnode.util import proc as procutil

log = logging.getLogger("aqnode.shard")

SWEEP_INTERVAL_S = 0.25  #: seconds between idle-worker sweeps (a bound on teardown lateness)


class Shard:
    def __init__(self, index: int, channel: ipc.ShardEnd) -> None:
        self.index = index
        self.channel = channel
        self.bus = ShardBus(channel)
        self.pool: WorkerPool | None = None
        self.catalogue = Catalogue(())
        self.stopping: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def boot(self) -> NodeConfig:
        self.channel.send(ipc.Hello(ipc.PROTOCOL_VERSION, self.index, os.getpid()))
        frame = await self.channel.receive()
        if not frame or not isinstance(frame[0], ipc.Welcome):
            raise errors.StartupError("the supervisor did not answer the shard's Hello")
        welcome = frame[0]
        if welcome.protocol != ipc.PROTOCOL_VERSION:
            raise errors.StartupError(
                f"protocol mismatch: supervisor {welcome.protocol}, shard {ipc.PROTOCOL_VERSION}"
            )
        return decode_config(welcome.config)

    def start_pool(self, config: NodeConfig) -> None:
        catalogue = build_catalogue({n: e.default_entity_id for n, e in config.entities.items()})
        check_config_against(catalogue, config)
        self.bus.max_payload_bytes = config.max_payload_bytes
        self.catalogue = catalogue
        channel = self.channel
        self.pool = WorkerPool(
            config, catalogue, channel.send, self.bus, channel.confirm, channel.send_now
        )

    async def serve(self, heartbeat_s: float) -> int:
        assert self.pool is not None
        pool = self.pool
        self.channel.send(ipc.Ready(self.catalogue.describe()))
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._read(pool)),
            loop.create_task(self._heartbeat(pool, heartbeat_s)),
            loop.create_task(self._sweep(pool)),
        ]
        try:
            return await self.stopping
        finally:
            for task in tasks:
                task.cancel()

    async def _read(self, pool: WorkerPool) -> None:
        def take(frame: list[ipc.ToShard]) -> None:  # in data_received: no task per frame
            for item in frame:
                if isinstance(item, ipc.Deliver):
                    pool.deliver(item)
                elif isinstance(item, ipc.DispatchResult | ipc.RetryResult):
                    pool.log_result(item)
                elif isinstance(item, ipc.SubmitResult):
                    self.bus.resolve(item)
                elif isinstance(item, ipc.Stop):
                    asyncio.get_running_loop().create_task(self._drain(pool, item))
                elif isinstance(item, ipc.Lease):
                    pool.set_lease(item.until)

        try:
            await self.channel.serve(take)
        except ipc.ProtocolError as exc:
            log.error("shard %d: %s; exiting", self.index, exc)
        # the supervisor is gone: nothing we run could be reported
        os._exit(procutil.EXIT_PARENT_GONE)

    async def _drain(self, pool: WorkerPool, stop: ipc.Stop) -> None:
        pool.start_draining()
        finished = await pool.wait_idle(stop.drain_timeout_ms / 1000)
        if not finished:
            log.warning("shard %d: handlers still running at the drain time-out", self.index)
        await self.channel.drain()
        if not self.stopping.done():
            self.stopping.set_result(0)

    async def _heartbeat(self, pool: WorkerPool, interval: float) -> None:
        while True:
            self.channel.send(ipc.Heartbeat(len(pool.workers), pool.queued, pool.handled))
            await asyncio.sleep(interval)

    async def _sweep(self, pool: WorkerPool) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            pool.sweep()


async def _main(fd: int, index: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    shard = Shard(index, ipc.shard_end(reader, writer))
    try:
        config = await shard.boot()
    except (errors.StartupError, ipc.ProtocolError) as exc:
        print(f"aqnode shard {index}: {exc}", file=sys.stderr, flush=True)
        return procutil.EXIT_BOOT_ERROR
    _setup_logging(config.verbose)
    try:
        import_handler_modules(config.handlers)
        shard.start_pool(config)
    except errors.StartupError as exc:
        print(f"aqnode shard {index}: {exc}", file=sys.stderr, flush=True)
        shard.channel.send(ipc.BootFailed(str(exc).split("\n", 1)[0]))
        await shard.channel.drain()
        return procutil.EXIT_IMPORT_ERROR
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT reach shards from a terminal's process group too; the supervisor
    # decides when shards stop (it sends Stop), so they are ignored here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)
    return await shard.serve(config.shard_heartbeat_ms / 1000)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s shard[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


#: the exit code of a child forked from a shard (it exits before running any code)
EXIT_FORKED_CHILD = 70
_FORKED = (
    b"aqnode shard: a handler called os.fork(); the child exits at once: a copy of a "
    b"shard would share its socket to the supervisor and take its messages (use "
    b"subprocess, or multiprocessing with the spawn or forkserver start method)\n"
)


def _forked_child() -> None:
    """After ``os.fork()`` in the child: a copy of this process would read the parent's
    frames from the shared socket and run its messages. It ends before any code runs.
    (``subprocess`` forks without this hook, unless it is given a ``preexec_fn``.)"""
    os.write(2, _FORKED)
    os._exit(EXIT_FORKED_CHILD)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aqnode.shard", description="an aqnode shard process")
    parser.add_argument("--fd", type=int, required=True, help="the supervisor socket's fd")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    args = parser.parse_args(argv)
    procutil.die_with_parent(args.parent)
    os.register_at_fork(after_in_child=_forked_child)
    # multiprocessing in a handler starts fresh interpreters, never forks of this one
    # (which the hook above ends at once: a fork-based Pool would respawn them for ever).
    multiprocessing.set_start_method("spawn", force=True)
    try:
        code = procutil.run(_main(args.fd, args.index))
    except Exception:
        traceback.print_exc()
        code = procutil.EXIT_BOOT_ERROR
    sys.stderr.flush()
    os._exit(code)  # do not wait for handler threads that a drain time-out left behind


if __name__ == "__main__":
    main()
