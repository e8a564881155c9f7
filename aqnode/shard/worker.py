"""Entity workers inside a shard: one FIFO per entity key, one handler at a time.

A worker with messages has exactly one task, which walks its queue: ask the supervisor
to make ``dispatched`` durable, run the handler, report the outcome, next. A worker with
no messages has no task and no timer: it sits in its entity type's idle list (oldest
first) until one sweep per shard tears it down after ``worker_idle_timeout_ms``.

At most once, by construction: a durable ``dispatched`` mark is a *permit* for exactly
one run (``Deliver.dispatched``, or a granted ``Dispatch``). :meth:`WorkerPool._run_once`
consumes the permit before it calls the handler and refuses to call without one, and
every way out of a handler (any exception, ``SystemExit``, a failing ``__str__``)
becomes that message's one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from aqnode import errors, ipc
from aqnode.catalogue import Catalogue, MessageSpec
from aqnode.config import NodeConfig, RetryPolicy
from aqnode.context import Context
from aqnode.shard.bus import ContextBus, ShardBus
from aqnode.util.backoff import doubling
from aqnode.util.loops import LoopRef

log = logging.getLogger("aqnode.worker")

DISPATCH_RETRY_MIN_S = 0.05  #: seconds; first wait after the log could not mark dispatched
DISPATCH_RETRY_MAX_S = 1.0  #: seconds; the wait doubles up to this while Redis is away


class EntityWorker:
    """One entity's FIFO. Idle, it is a few hundred bytes: no task, no timer, no deque."""

    __slots__ = ("entity_type", "key", "queue", "running")

    def __init__(self, key: str, entity_type: str) -> None:
        self.key = key
        self.entity_type = entity_type  # interned: one string per type, not per worker
        self.queue: deque[ipc.Deliver] | None = None
        self.running = False


class WorkerPool:
    def __init__(
        self,
        config: NodeConfig,
        catalogue: Catalogue,
        send: Callable[[Any], None],
        shard_bus: ShardBus,
        confirm: Callable[[], Awaitable[None]] | None = None,
        send_now: Callable[[Any], bool] | None = None,
    ) -> None:
        self._config = config
        self._catalogue = catalogue
        self._send = send
        #: resolves once every item sent so far is in the kernel (see ipc.Started)
        self._confirm = confirm or _nothing_to_confirm
        #: writes at once when nothing is queued: True if it is in the kernel already
        self._send_now = send_now or _queued(send)
        self._shard_bus = shard_bus
        self._max_reply_bytes = config.max_reply_bytes
        self._idle_timeouts = {
            n: e.worker_idle_timeout_ms / 1000 for n, e in config.entities.items()
        }
        self._default_idle_timeout = config.entity("").worker_idle_timeout_ms / 1000
        self.workers: dict[str, EntityWorker] = {}
        self._idle: dict[str, OrderedDict[str, float]] = {}  # entity type -> key -> idle since
        self._asking: dict[str, asyncio.Future[ipc.DispatchResult | ipc.RetryResult]] = {}
        self._policies: dict[str, RetryPolicy] = {}
        self._loggers: dict[str, logging.Logger] = {}
        self._drain_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: cluster mode: time.monotonic() after which no handler starts (see ipc.Lease)
        self.lease_until = math.inf
        self._lease_renewed = asyncio.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self._loop = LoopRef()
        self.handled = 0
        self.draining = False  # set on Stop: running handlers finish, nothing new starts
        self.queued = 0  # messages in all queues, the running ones included

    # ---- from the supervisor ---------------------------------------------------------

    def deliver(self, item: ipc.Deliver) -> None:
        key = f"{item.entity_type}:{item.entity_id}"
        worker = self.workers.get(key)
        if worker is None:
            worker = self.workers[key] = EntityWorker(key, sys.intern(item.entity_type))
        else:
            idle = self._idle.get(item.entity_type)
            if idle is not None:
                idle.pop(key, None)
        if worker.queue is None:
            worker.queue = deque()
        worker.queue.append(item)
        self.queued += 1
        if not worker.running:
            worker.running = True
            task = self._loop.get().create_task(self._run(worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def log_result(self, item: ipc.DispatchResult | ipc.RetryResult) -> None:
        future = self._asking.pop(item.message_id, None)
        if future is not None and not future.done():
            future.set_result(item)

    # ---- the worker's task -----------------------------------------------------------

    async def _run(self, worker: EntityWorker) -> None:
        try:
            await self._walk(worker)
        finally:
            # Whatever ends the walk, the worker must take its next Deliver again.
            worker.running = False
            if not worker.queue:
                worker.queue = None
                idle = self._idle.setdefault(worker.entity_type, OrderedDict())
                idle[worker.key] = time.monotonic()

    async def _walk(self, worker: EntityWorker) -> None:
        queue = worker.queue
        assert queue is not None
        # Draining starts nothing new, but a head already `dispatched` in the log runs.
        while queue and (not self.draining or queue[0].dispatched):
            item = queue[0]
            if not item.dispatched:
                if not await self._until_logged(ipc.Dispatch(item.message_id)):
                    self._pop(worker)  # the log says it may not run; its waiter was told
                    continue
                item.dispatched = True  # the permit for one run
            outcome = await self._run_once(item)
            try:
                retried = await self._after(worker, item, outcome)
            except Exception as exc:  # a bug of ours: the message still gets its outcome
                log.exception("worker %s: recording the outcome of %s failed", worker.key, item)
                retried = False
                if queue and queue[0] is item:  # not reported yet: report it, once
                    self._finish(worker, _failed(item, exc, outcome.started_at, outcome.duration_s))
            if retried:
                continue

    async def _after(self, worker: EntityWorker, item: ipc.Deliver, outcome: ipc.Outcome) -> bool:
        """Report ``outcome``, or log a retry; True if the message stays at the head."""
        policy = self._retry_policy(item.entity_type)
        if not outcome.ok and item.attempt < policy.max_attempts:
            # Head of line: the message is `enqueued` again before anything else of this
            # entity runs, and waits out its backoff at the front of the queue.
            assert outcome.error is not None
            if await self._until_logged(ipc.Retry(item.message_id, outcome.error)):
                await self._pause(backoff_s(policy, item.attempt))
                item.attempt += 1
                return True
            self._pop(worker)  # the log refused the retry; the supervisor told its waiter
            return False
        self._finish(worker, outcome)
        return False

    def _finish(self, worker: EntityWorker, outcome: ipc.Outcome) -> None:
        self._pop(worker)
        self.handled += 1
        try:
            self._send_now(outcome)
        except ipc.FrameEncodeError as exc:
            # What the handler made cannot travel (its error's text, say): the message
            # still gets one outcome, built only of what the node itself made.
            log.error("worker %s: the outcome of %s: %s", worker.key, outcome.message_id, exc)
            self._send_now(_unencodable(outcome, exc))

    def set_lease(self, until: float) -> None:
        self.lease_until = until
        self._lease_renewed.set()

    async def _within_lease(self) -> None:
        """Cluster mode: wait while the node's lease is over (it may have been declared
        dead, its entities moved); the supervisor renews it, or ends this shard."""
        while time.monotonic() >= self.lease_until:
            self._lease_renewed.clear()
            await self._lease_renewed.wait()

    async def _run_once(self, item: ipc.Deliver) -> ipc.Outcome:
        """Consume the message's permit and call its handler: at most once per permit."""
        if time.monotonic() >= self.lease_until:
            await self._within_lease()
        if not item.dispatched:  # unreachable by design; refuse rather than run twice
            error = errors.AqError(
                f"message {item.message_id} was about to run without a dispatched mark; "
                "it was not run"
            )
            return ipc.Outcome(item.message_id, False, b"", error.to_dict())
        item.dispatched = False  # consumed before the call: nothing can make it run again
        # A crash from the moment Started is in the kernel is known to have interrupted
        # it: written at once when nothing is queued (no loop turn), else confirmed.
        if not self._send_now(ipc.Started(item.message_id)):
            await self._confirm()
        return await self._execute(item)

    def _pop(self, worker: EntityWorker) -> None:
        assert worker.queue is not None
        worker.queue.popleft()
        self.queued -= 1

    async def _until_logged(self, item: ipc.Dispatch | ipc.Retry) -> bool:
        """Send a transition and wait until it is durable; while Redis is away, keep asking
        (the message keeps its place). False if the log refuses it for good."""
        tries = 0
        while True:
            future: asyncio.Future[ipc.DispatchResult | ipc.RetryResult]
            future = self._loop.get().create_future()
            self._asking[item.message_id] = future
            self._send(item)
            result = await future
            if result.ok:
                return True
            if not result.again or self.draining:
                return False  # refused for good: the supervisor has answered its waiters
            tries += 1
            await self._pause(doubling(DISPATCH_RETRY_MIN_S, DISPATCH_RETRY_MAX_S, tries))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the shard starts draining."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain_event.wait(), seconds)

    def _logger(self, entity_type: str) -> logging.Logger:
        logger = self._loggers.get(entity_type)
        if logger is None:
            logger = self._loggers[entity_type] = logging.getLogger(f"aqnode.handler.{entity_type}")
        return logger

    def _retry_policy(self, entity_type: str) -> RetryPolicy:
        policy = self._policies.get(entity_type)
        if policy is None:
            policy = self._policies[entity_type] = self._config.retry_for(entity_type)
        return policy

    def start_draining(self) -> None:
        self.draining = True
        self._drain_event.set()

    async def _execute(self, item: ipc.Deliver) -> ipc.Outcome:
        """Run the handler; whatever it does (SystemExit, a cancellation of its own task,
        ...) becomes the Outcome: this never raises. The shard stops by exiting, never by
        cancelling a worker, so every cancellation seen here is the handler's."""
        started_at, started = time.time(), time.perf_counter()
        try:
            spec = self._catalogue.lookup(item.entity_type, item.message)
            msg = spec.msgpack_decoder.decode(item.payload)
            reply = await self._call(spec, msg, item)
            encoded = self._encode_reply(spec, reply)
        except BaseException as exc:  # the handler's failure is the message's outcome
            outcome = _failed(item, exc, started_at, time.perf_counter() - started)
        else:
            outcome = ipc.Outcome(
                item.message_id, True, encoded, None, started_at, time.perf_counter() - started
            )
        task = asyncio.current_task(self._loop.get())
        if task is not None and task.cancelling():
            # The handler cancelled the task it ran in (this worker's; nothing else ever
            # cancels a worker): that cancellation was its own failure, not the worker's.
            await _absorb_cancellation(task)
        return outcome

    def _encode_reply(self, spec: MessageSpec, reply: Any) -> bytes:
        """The reply as msgpack, checked against the message's reply type and size: a
        typed caller gets an ``R`` or HANDLER_ERROR, never a bare decode error."""
        declared = f"{spec.name} declares the reply type {spec.reply_type_name}"
        try:
            encoded = self._encoder.encode(reply)
        except Exception as exc:  # a set, a surrogate, an int over 64 bits, a cycle, ...
            raise ReplyTypeError(
                f"{spec.handler.qualname} returned a {type(reply).__qualname__} that cannot be "
                f"encoded ({type(exc).__name__}: {exc}); {declared}"
            ) from None
        if len(encoded) > self._max_reply_bytes:
            raise ReplyTooLarge(
                f"{spec.handler.qualname} returned a reply of {len(encoded)} bytes, over "
                f"max_reply_bytes = {self._max_reply_bytes}"
            )
        problem = spec.reply_problem(reply, encoded)
        if problem is not None:
            raise ReplyTypeError(
                f"{spec.handler.qualname} returned {type(reply).__qualname__}, but {declared} "
                f"({problem})"
            )
        return encoded

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
                logger=self._logger(item.entity_type),
                bus=ContextBus(self._shard_bus, item.entity_type, item.entity_id),
                fencing_token=item.fencing_token,
            )
            args = (msg, ctx)
        if spec.is_async:
            # In the worker's own task (a task per message would cost a third of the
            # shard's CPU): _execute turns whatever escapes into the message's outcome.
            if self.lease_until != math.inf:  # cluster mode: stopped when the lease ends
                return await _Leased(func(*args), self)
            return await func(*args)
        # A plain def runs in a thread so that it does not stall other entities.
        return await self._loop.get().run_in_executor(None, func, *args)

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


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (SPEC section 7)."""
    if policy.backoff == "fixed":
        return min(policy.backoff_delay_ms, policy.max_delay_ms) / 1000
    return doubling(policy.backoff_delay_ms, policy.max_delay_ms, attempt) / 1000


class ReplyTypeError(TypeError):
    """A handler returned something that is not its message's reply type."""


class ReplyTooLarge(ValueError):
    """A handler's reply is over max_reply_bytes."""


async def _absorb_cancellation(task: asyncio.Task[Any]) -> None:
    """Take back cancellations requested during a handler, a pending one included (it is
    delivered at the next await, here, instead of in the worker's own code)."""
    while task.cancelling():
        task.uncancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    while task.cancelling():
        task.uncancel()


class LeaseOver(Exception):
    """Thrown into a handler that would go on past its node's lease."""


class _Leased:
    """Drives a handler's coroutine step by step and, before every step, checks the
    node's lease: a handler resumed after its node's lease ran out (the process was
    paused, or cut off from Redis) gets LeaseOver instead of running on, because its
    entity may already run elsewhere. A handler that catches it is thrown it again at
    its next step. (A plain ``def`` handler in a thread cannot be stopped this way.)"""

    __slots__ = ("_coro", "_pool")

    def __init__(self, coro: Any, pool: WorkerPool) -> None:
        self._coro = coro
        self._pool = pool

    def __await__(self) -> Any:
        coro, pool = self._coro, self._pool
        value: Any = None
        error: BaseException | None = None
        while True:
            if error is None and time.monotonic() >= pool.lease_until:
                error = LeaseOver(
                    "this node's membership lease ran out while the handler was running "
                    "(the node was paused or cut off from Redis) and its entity may run "
                    "elsewhere now: the handler was stopped (fail if interrupted)"
                )
            try:
                if error is not None:
                    thrown, error = error, None
                    step = coro.throw(thrown)
                else:
                    step = coro.send(value)
            except StopIteration as done:
                return done.value
            try:
                value = yield step
            except BaseException as exc:  # e.g. a cancellation: handed to the handler
                value, error = None, exc


def _queued(send: Callable[[Any], None]) -> Callable[[Any], bool]:
    def send_now(item: Any) -> bool:
        send(item)
        return False  # queued: confirm() says when it is in the kernel

    return send_now


async def _nothing_to_confirm() -> None:
    return None


def _failed(item: ipc.Deliver, exc: BaseException, started_at: float, took: float) -> ipc.Outcome:
    return ipc.Outcome(item.message_id, False, b"", handler_error(exc).to_dict(), started_at, took)


def _unencodable(outcome: ipc.Outcome, exc: ipc.FrameEncodeError) -> ipc.Outcome:
    error = errors.HandlerError(
        f"the outcome of message {outcome.message_id} could not be sent ({exc}); the "
        "handler ran once and its reply or error is lost",
        remote_type="aqnode.UnencodableOutcome",
        remote_message=str(exc),
    )
    return ipc.Outcome(
        outcome.message_id, False, b"", error.to_dict(), outcome.started_at, outcome.duration_s
    )


def handler_error(exc: BaseException) -> errors.HandlerError:
    """Wrap whatever a handler raised (an AqError from a bus call too) as HANDLER_ERROR.

    Never raises: an exception whose ``__str__`` (or ``__repr__``, or traceback
    formatting) fails is still described, by what can be known of it."""
    cls = type(exc)
    name = errors.wire_text(
        _safely(
            lambda: (
                cls.__qualname__
                if cls.__module__ == "builtins"
                else f"{cls.__module__}.{cls.__qualname__}"
            ),
            "<an exception whose class has no printable name>",
        )
    )
    text = errors.wire_text(_safely(lambda: str(exc), f"<{name}: its __str__ raised>"))
    trace = errors.wire_text(
        _safely(
            lambda: "".join(traceback.format_exception(exc)),
            f"{name}: {text}\n(the traceback could not be formatted)",
        )
    )
    return errors.HandlerError(
        f"the handler raised {name}: {text}",
        remote_type=name,
        remote_message=text,
        remote_traceback=trace,
    )


def _safely(render: Callable[[], str], fallback: str) -> str:
    try:
        return str(render())
    except BaseException:  # user code: a __str__ may raise anything
        return fallback
