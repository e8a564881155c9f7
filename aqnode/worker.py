"""Entity workers inside a shard: one FIFO per entity key, one handler at a time.

A worker with messages has exactly one task, which walks its queue: ask the supervisor
to make ``dispatched`` durable, run the handler, report the outcome, next. A worker with
no messages has no task and no timer: it sits in its entity type's idle list (oldest
first) until one sweep per shard tears it down after ``worker_idle_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec

from aqnode import errors, ipc
from aqnode.catalogue import Catalogue, MessageSpec
from aqnode.context import Context, ContextBus, ShardBus

log = logging.getLogger("aqnode.worker")

DISPATCH_RETRY_MIN_S = 0.05  #: seconds; first wait after the log could not mark dispatched
DISPATCH_RETRY_MAX_S = 1.0  #: seconds; the wait doubles up to this while Redis is away


class EntityWorker:
    __slots__ = ("entity_id", "entity_type", "key", "queue", "running")

    def __init__(self, key: str, entity_type: str, entity_id: str) -> None:
        self.key = key
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.queue: deque[ipc.Deliver] = deque()
        self.running = False


class WorkerPool:
    def __init__(
        self,
        catalogue: Catalogue,
        send: Callable[[Any], None],
        shard_bus: ShardBus,
        idle_timeouts_s: dict[str, float],
        default_idle_timeout_s: float,
    ) -> None:
        self._catalogue = catalogue
        self._send = send
        self._shard_bus = shard_bus
        self._idle_timeouts = idle_timeouts_s
        self._default_idle_timeout = default_idle_timeout_s
        self.workers: dict[str, EntityWorker] = {}
        self._idle: dict[str, OrderedDict[str, float]] = {}  # entity type -> key -> idle since
        self._dispatching: dict[str, asyncio.Future[ipc.DispatchResult]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._encoder = msgspec.msgpack.Encoder()
        self.handled = 0
        self.draining = False  # set on Stop: running handlers finish, nothing new starts
        self.queued = 0  # messages in all queues, the running ones included

    # ---- from the supervisor ---------------------------------------------------------

    def deliver(self, item: ipc.Deliver) -> None:
        key = f"{item.entity_type}:{item.entity_id}"
        worker = self.workers.get(key)
        if worker is None:
            worker = self.workers[key] = EntityWorker(key, item.entity_type, item.entity_id)
        else:
            idle = self._idle.get(item.entity_type)
            if idle is not None:
                idle.pop(key, None)
        worker.queue.append(item)
        self.queued += 1
        if not worker.running:
            worker.running = True
            task = asyncio.get_running_loop().create_task(self._run(worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def dispatch_result(self, item: ipc.DispatchResult) -> None:
        future = self._dispatching.pop(item.message_id, None)
        if future is not None and not future.done():
            future.set_result(item)

    # ---- the worker's task -----------------------------------------------------------

    async def _run(self, worker: EntityWorker) -> None:
        delay = DISPATCH_RETRY_MIN_S
        while worker.queue and not self.draining:
            item = worker.queue[0]
            result = await self._dispatch(item.message_id)
            if not result.ok:
                code = (result.error or {}).get("code")
                if code == errors.REDIS_UNAVAILABLE:
                    # Not durable, so not started: the message keeps its place and waits.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, DISPATCH_RETRY_MAX_S)
                    continue
                # The log says this message may not run (the supervisor has told its waiter).
                worker.queue.popleft()
                self.queued -= 1
                continue
            delay = DISPATCH_RETRY_MIN_S
            worker.queue.popleft()
            outcome = await self._execute(item)
            self.queued -= 1
            self.handled += 1
            self._send(outcome)
        worker.running = False
        self._idle.setdefault(worker.entity_type, OrderedDict())[worker.key] = time.monotonic()

    def _dispatch(self, message_id: str) -> asyncio.Future[ipc.DispatchResult]:
        future: asyncio.Future[ipc.DispatchResult] = asyncio.get_running_loop().create_future()
        self._dispatching[message_id] = future
        self._send(ipc.Dispatch(message_id))
        return future

    async def _execute(self, item: ipc.Deliver) -> ipc.Outcome:
        try:
            spec = self._catalogue.lookup(item.entity_type, item.message)
            msg = spec.msgpack_decoder.decode(item.payload)
            reply = await self._call(spec, msg, item)
            return ipc.Outcome(item.message_id, True, self._encoder.encode(reply))
        except Exception as exc:  # the handler's failure is the message's outcome
            return ipc.Outcome(item.message_id, False, error=handler_error(exc).to_dict())

    async def _call(self, spec: MessageSpec, msg: Any, item: ipc.Deliver) -> Any:
        func = spec.handler.func
        if not spec.takes_context:
            args: tuple[Any, ...] = (msg,)
        else:
            ctx = Context(
                entity_type=item.entity_type,
                entity_id=item.entity_id,
                message_id=item.message_id,
                attempt=item.attempt,
                enqueued_at=item.enqueued_at,
                logger=logging.getLogger(f"aqnode.handler.{item.entity_type}"),
                bus=ContextBus(self._shard_bus, item.entity_type, item.entity_id),
            )
            args = (msg, ctx)
        if spec.handler.is_async:
            return await func(*args)
        # A plain def runs in a thread so that it does not stall other entities.
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    # ---- idle teardown ---------------------------------------------------------------

    def sweep(self) -> int:
        """Tear down workers idle past their timeout; returns how many went."""
        now = time.monotonic()
        gone = 0
        for entity_type, idle in self._idle.items():
            limit = self._idle_timeouts.get(entity_type, self._default_idle_timeout)
            while idle:
                key, since = next(iter(idle.items()))
                if now - since < limit:
                    break
                del idle[key]
                worker = self.workers.get(key)
                if worker is not None and not worker.running and not worker.queue:
                    del self.workers[key]
                    self._send(ipc.WorkerGone(key))
                    gone += 1
        return gone

    async def wait_idle(self, timeout: float) -> bool:
        """Wait for running handlers to finish (draining); False if the time ran out."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending


def handler_error(exc: BaseException) -> errors.HandlerError:
    """Wrap whatever a handler raised (an AqError from a bus call too) as HANDLER_ERROR."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return errors.HandlerError(
        f"the handler raised {name}: {exc}",
        remote_type=name,
        remote_message=str(exc),
        remote_traceback="".join(traceback.format_exception(exc)),
    )
