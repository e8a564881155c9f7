"""The supervisor's message flow: validate, admit, log, route, dispatch, finish, reply.

Everything here runs on the supervisor's event loop and is callback-driven: a batch of
calls goes to the write-ahead log as one request and comes back in commit order, which
is what keeps FIFO per sender without a lock. The core never runs entity code; it keeps
one record per live message (enqueued or dispatched) so that it can redeliver a
restarted shard's queue and answer waiters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from aqnode import errors, ipc
from aqnode.bus import MAX_TIMEOUT_S, Envelope, SendResult
from aqnode.config import NodeConfig
from aqnode.supervisor.ledger import Ledger
from aqnode.supervisor.lifecycle import LOG_RETRY_S, ShardLifecycle
from aqnode.supervisor.live import (
    TAKING_BACK,
    Admitted,
    Call,
    LiveMessage,
    ShardPort,
    State,
    Waiter,
    converted,
    failure,
    reply_in_callers_type,
)
from aqnode.supervisor.message_ids import MessageIds
from aqnode.supervisor.metrics import NodeMetrics
from aqnode.supervisor.placement import STANDALONE, Placement
from aqnode.supervisor.registry import RegistryPublisher
from aqnode.util.loops import LoopRef
from aqnode.util.ring import HashRing, entity_key
from aqnode.validation import Validator
from aqnode.wal import (
    Applied,
    EnqueueEntry,
    Failed,
    FinishEntry,
    LogState,
    Outcome,
    Refused,
    RetryEntry,
    WriteAheadLog,
)
from aqnode.wiretypes import MessageEntry

log = logging.getLogger("aqnode.core")

__all__ = ["Call", "NodeCore"]


class NodeCore:
    def __init__(self, config: NodeConfig, validator: Validator, wal: WriteAheadLog, shards: int):
        self.config = config
        self.validator = validator
        self.wal = wal
        self.ring = HashRing(shards)
        self._loop = LoopRef()
        self.ledger = Ledger(shards)
        self.metrics = NodeMetrics()
        self.lifecycle = ShardLifecycle(config, wal, self.ring, self.ledger, self.metrics)
        self.draining = False
        self.redis_ok = True  # set by the supervisor's health check
        self.placement: Placement = STANDALONE  # cluster mode: the group member
        #: publishes what the node handles to the registry (SPEC 11) and serves it
        self.registry: RegistryPublisher | None = None
        #: cluster mode: the log refused a write because the group declared this node dead
        self.on_fenced: Callable[[], None] | None = None
        #: cluster mode: the node's membership lease lapsed (self-fencing): no new work,
        #: no handler starts, until it is renewed
        self.lapsed = False
        self._ids = MessageIds()
        self._entity_limits = {
            name: cfg.worker_max_queue_depth for name, cfg in config.entities.items()
        }
        self._reply_timeouts = {name: cfg.reply_timeout_ms for name, cfg in config.entities.items()}
        self._default_reply_timeout = config.entity("").reply_timeout_ms
        wal.on_commit = lambda kind, n: self.metrics.commit_batch.observe((kind,), n)

    def reply_timeout_ms(self, entity_type: str) -> int:
        return self._reply_timeouts.get(entity_type, self._default_reply_timeout)

    @property
    def live(self) -> dict[str, LiveMessage]:
        """Every message admitted to the log and not finished, by id."""
        return self.ledger.live

    @property
    def uncertain(self) -> list[Admitted]:
        """Enqueues whose outcome a Redis failure hid (see :meth:`adopt_uncertain`)."""
        return self.lifecycle.uncertain

    # ---- shards and the log, as the node sees them (lifecycle.py) ---------------------

    def shard_up(self, shard: int, send: Callable[[ipc.ToShard], None]) -> None:
        self.lifecycle.shard_up(shard, send)

    def shard_down(self, shard: int, *, read_to_the_end: bool) -> None:
        self.lifecycle.shard_down(shard, read_to_the_end=read_to_the_end)

    async def recover(self, entries: list[dict[str, Any]]) -> tuple[int, int]:
        return await self.lifecycle.recover(entries)

    async def adopt_uncertain(self) -> int:
        return await self.lifecycle.adopt_uncertain()

    async def settled(self, timeout: float) -> bool:
        """Wait until no transition is in flight to the log; False if time ran out."""
        try:
            await asyncio.wait_for(self.lifecycle.settle(), timeout)
        except TimeoutError:
            return False
        return True

    def learn(self, catalogue: list[MessageEntry]) -> None:
        """What the node handles, as the first ready shard described it (no user code)."""
        self.validator = Validator(catalogue)
        if self.registry is not None:
            self.registry.offer(catalogue)

    # ---- sends -----------------------------------------------------------------------

    def submit(self, calls: list[Call]) -> None:
        """Validate and admit ``calls`` in order, then log them as one group-commit batch."""
        admitted: list[Admitted] = []
        for call in calls:
            try:
                admitted_call = self._admit(call)
            except errors.AqError as exc:
                self._reject(call, exc)
                continue
            except Exception as exc:  # a bug of ours: this call alone fails, the batch goes on
                log.exception("admitting a message failed")
                self._reject(
                    call, errors.AqError(f"the node failed to admit this message: {exc!r}")
                )
                continue
            if admitted_call is not None:
                admitted.append(admitted_call)
        if not admitted:
            return
        now = time.time()
        entries = [
            EnqueueEntry(
                a.message_id,
                a.entity_type,
                a.call.envelope.message,
                a.entity_id,
                a.payload,
                now,
                a.dispatch,
                a.call.adopted,
            )
            for a in admitted
        ]
        self.wal.enqueue(entries, lambda result: self._logged(admitted, now, result))

    def _reject(self, call: Call, exc: errors.AqError) -> None:
        etype = call.envelope.entity_type
        # A label per unknown name would let any client grow the metrics without bound.
        label = etype if etype in self.validator.entity_types else "(unknown)"
        self.metrics.rejected.inc((label, exc.code))
        call.reply(failure("", exc))

    def _check_sizes(self, env: Envelope) -> None:
        """Refuse what is too large before anything is decoded (SPEC 8)."""
        limit = self.config.max_payload_bytes
        if len(env.payload) > limit:
            raise errors.PayloadTooLarge(
                f"the payload is {len(env.payload)} bytes, over max_payload_bytes = {limit}; "
                "send less, or raise the limit in the node's config"
            )
        max_id = self.config.max_id_bytes
        if (len(env.entity_id) + len(env.message_id)) * 4 <= max_id:
            return  # nearly always: no character is over 4 bytes, nothing to encode
        for name, value in (("entity_id", env.entity_id), ("message_id", env.message_id)):
            size = _utf8_size(value, max_id)
            if size > max_id:
                raise errors.ValidationFailed(
                    f"{name} is {size} bytes, over max_id_bytes = {self.config.max_id_bytes}",
                    field=name,
                )

    def _admit(self, call: Call) -> Admitted | None:
        if self.draining:
            raise errors.Draining(
                "the node is shutting down and takes no new messages; "
                "retry on another node or after it restarts"
            )
        if not self.redis_ok:
            raise errors.RedisUnavailable(
                "Redis is not answering, so nothing can be made durable; nothing was "
                "written; retry when it is back"
            )
        if self.lapsed:
            raise errors.Unavailable(
                "this node could not renew its membership in its group (Redis unreachable, "
                "or the node was paused), so it takes no work for now; nothing was written; "
                "send it to another node of the group"
            )
        env = call.envelope
        if not 0 <= call.timeout_ms <= MAX_TIMEOUT_S * 1000:
            raise errors.ValidationFailed(
                f"timeout_ms = {call.timeout_ms} is not in [0, {MAX_TIMEOUT_S * 1000}] "
                "(0: the entity type's reply_timeout_ms); nothing was written",
                field="timeout_ms",
            )
        self._check_sizes(env)
        spec, entity_id, payload = self.validator.validate(
            env.entity_type, env.message, env.entity_id, env.payload, env.content_type
        )
        if _utf8_size(entity_id, self.config.max_id_bytes) > self.config.max_id_bytes:
            raise errors.ValidationFailed(
                f"the entity id in field `{spec.id_field}` is over max_id_bytes = "
                f"{self.config.max_id_bytes}",
                field=spec.id_field,
            )
        key = entity_key(spec.entity_type, entity_id)
        if call.wait and call.caller == key:
            raise errors.SelfWait(
                f"a handler of {key} waited on its own entity, which would wait for ever; "
                "use enqueue instead of enqueue_and_wait"
            )
        message_id = env.message_id or self._ids.next()
        known = self.ledger.live.get(message_id)
        if known is not None:  # an idempotency key already live here: attach, write nothing
            self._answer_when_done(known, call)
            return None
        if env.message_id != message_id or env.entity_id != entity_id:
            # The ids travel with the call if it goes to another node: an error from
            # there can then name the message_id to resend under.
            call.envelope = msgspec.structs.replace(env, message_id=message_id, entity_id=entity_id)
        if not self.placement.take(call, key):
            return None  # forwarded to its owner, or waiting to learn where that is
        self._check_limits(spec.entity_type, key)
        depth = self.ledger.depth.get(key, 0)
        self.ledger.track(key)
        shard = self.ring.shard_for(key)
        port = self.ledger.ports[shard]
        # An idle entity's message may be logged `dispatched` at once: its worker will
        # start it next, so the separate dispatch round trip would only add latency.
        dispatch = depth == 0 and port.open
        return Admitted(
            call,
            spec.entity_type,
            entity_id,
            key,
            message_id,
            payload,
            shard,
            port.generation,
            dispatch,
        )

    def _check_limits(self, etype: str, key: str) -> None:
        depth = self.ledger.depth.get(key, 0)
        limit = self._entity_limits.get(etype, 0)
        if limit and depth > limit:  # `depth` already counts the one running
            raise errors.BackpressureError(
                f"{key} already has {depth - 1} messages waiting, its limit "
                f"([entities.{etype}] worker_max_queue_depth = {limit}); retry later",
                code=errors.QUEUE_DEPTH_EXCEEDED,
            )
        total = self.config.max_total_queue_depth
        if total and self.ledger.queued_total >= total:
            raise errors.BackpressureError(
                f"the node holds {self.ledger.queued_total} queued messages, its limit "
                f"(max_total_queue_depth = {total}); retry later",
                code=errors.QUEUE_DEPTH_EXCEEDED,
            )
        workers = self.config.max_total_workers
        entities = len(self.ledger.workers) + len(self.ledger.new_entities)
        known = key in self.ledger.workers or key in self.ledger.new_entities
        if workers and not known and entities >= workers:
            raise errors.BackpressureError(
                f"the node runs {entities} entity workers, its limit "
                f"(max_total_workers = {workers}); {key} has none yet; retry later",
                code=errors.WORKER_LIMIT_EXCEEDED,
            )

    def _logged(self, admitted: list[Admitted], now: float, outcomes: list[Outcome]) -> None:
        never_started: list[LiveMessage] = []
        for a, outcome in zip(admitted, outcomes, strict=True):
            match outcome:
                case Applied():
                    msg = self._accepted(a, now)
                    if msg is not None:
                        never_started.append(msg)
                case Refused(LogState.FENCED):
                    self.ledger.release(a.key)
                    a.call.reply(failure(a.message_id, _fenced_error(a.message_id)))
                    self._fenced()
                case Refused(state):  # the id was known to the log already
                    self.ledger.release(a.key)
                    self._duplicate(a, state)
                case Failed(error):
                    self._ambiguous(a, error)
        self.lifecycle.undispatch(never_started)

    def _accepted(self, a: Admitted, now: float) -> LiveMessage | None:
        """``a`` is in the log: track it, hand it over, answer its sender. Returns it if
        it was logged `dispatched` for a shard that has died since (it never got it)."""
        self.metrics.enqueued.inc((a.entity_type,))
        msg = a.live_message(now, State.DISPATCHED if a.dispatch else State.ENQUEUED)
        msg.token = self.placement.token(a.key)
        self.ledger.live[a.message_id] = msg
        # The sender hears first: its answer's frame is flushed before the shard's, so a
        # client sending one call at a time has its next call on the way sooner.
        if a.call.wait:
            self._add_waiter(msg, a.call)
        else:
            a.call.reply(SendResult(a.message_id, True))
        port = self.ledger.ports[a.shard]
        never_started = a.dispatch and port.generation != a.generation
        if never_started:
            # It goes back to `enqueued` before it runs; until then nothing of its shard
            # may overtake it (try_open re-opens the port in log order once it is back).
            port.open = False
        elif port.open and port.send is not None:
            self.ledger.deliver(msg)
        return msg if never_started else None

    def _ambiguous(self, a: Admitted, error: errors.AqError) -> None:
        """The write may have landed with only its reply lost: say so, look later."""
        self.ledger.release(a.key)
        self.lifecycle.uncertain.append(a)
        a.call.reply(
            failure(
                a.message_id,
                errors.RedisUnavailable(
                    f"{error.message}. Message {a.message_id} may or may not be in "
                    "the log (if it is, it runs once Redis is back); send it again with "
                    f"message_id={a.message_id!r} to be sure it runs exactly once",
                    message_id=a.message_id,
                ),
            )
        )

    def _duplicate(self, a: Admitted, state: str) -> None:
        known = self.ledger.live.get(a.message_id)
        if known is not None:
            self._answer_when_done(known, a.call)
        elif not a.call.wait:
            a.call.reply(SendResult(a.message_id, True))
        else:
            self._loop.get().create_task(self._answer_from_log(a.message_id, a.call, state))

    def _answer_when_done(self, msg: LiveMessage, call: Call) -> None:
        if call.wait:
            self._add_waiter(msg, call)
        else:
            call.reply(SendResult(msg.message_id, True))

    async def _answer_from_log(self, message_id: str, call: Call, state: str) -> None:
        """A wait on a finished idempotency key: answer with that one run's outcome."""
        try:
            fields = await self.wal.read_entry(message_id)
        except errors.AqError as exc:
            call.reply(failure(message_id, exc))
            return
        state = fields.get("state", state)
        if state == LogState.COMPLETED:
            call.reply(converted(message_id, fields.get("reply", b""), call.envelope.content_type))
        elif state in (LogState.FAILED, LogState.INTERRUPTED) and fields.get("error"):
            call.reply(SendResult(message_id, False, error=msgspec.msgpack.decode(fields["error"])))
        else:
            call.reply(
                failure(
                    message_id,
                    errors.AqError(
                        f"message {message_id} is {state} in this node's log "
                        "and has no reply to give"
                    ),
                )
            )

    def _add_waiter(self, msg: LiveMessage, call: Call) -> None:
        waiter = Waiter(call.reply, call.envelope.content_type)
        timeout_ms = call.timeout_ms or self._reply_timeouts.get(
            msg.entity_type, self._default_reply_timeout
        )
        waiter.timer = self._loop.get().call_later(
            timeout_ms / 1000, self._wait_timed_out, msg, waiter, timeout_ms
        )
        msg.waiters.append(waiter)

    def _wait_timed_out(self, msg: LiveMessage, waiter: Waiter, timeout_ms: int) -> None:
        if waiter in msg.waiters:
            msg.waiters.remove(waiter)
            waiter.reply(
                failure(
                    msg.message_id,
                    errors.ReplyTimeout(
                        f"no reply within {timeout_ms} ms; message {msg.message_id} is still "
                        f"{msg.state} and will still run"
                    ),
                )
            )

    # ---- from the shards -------------------------------------------------------------

    def on_shard_items(self, shard: int, items: list[ipc.ToSupervisor]) -> None:
        dispatches: list[str] = []
        finishes: list[tuple[LiveMessage, ipc.Outcome]] = []
        retries: list[tuple[LiveMessage, ipc.Retry]] = []
        submits: list[Call] = []
        port = self.ledger.ports[shard]
        for item in items:
            if isinstance(item, ipc.Started):
                msg = self.ledger.live.get(item.message_id)
                if msg is not None:
                    msg.started = True
            elif isinstance(item, ipc.Dispatch):
                msg = self.ledger.live.get(item.message_id)
                if self.lapsed or (msg is not None and msg.state in TAKING_BACK):
                    # Its mark is being taken back (or it is being interrupted): a
                    # dispatch now could be undone by that transition's retry while the
                    # handler runs. Or the node's lease lapsed: it starts no handler.
                    # Not now; the worker asks again, the message keeps its place.
                    port_send = port.send
                    if port_send is not None:
                        port_send(ipc.DispatchResult(item.message_id, False, None, again=True))
                    continue
                dispatches.append(item.message_id)
                if msg is not None:
                    msg.state = State.DISPATCHING
            elif isinstance(item, ipc.Retry):
                msg = self.ledger.live.get(item.message_id)
                if msg is not None:
                    msg.state = State.RETRYING
                    retries.append((msg, item))
            elif isinstance(item, ipc.Outcome):
                msg = self.ledger.live.get(item.message_id)
                if msg is not None:
                    msg.state = State.FINISHING  # it ran: a crash from now on interrupts nothing
                    finishes.append((msg, item))
            elif isinstance(item, ipc.Submit):
                submits.append(self._shard_call(port, item))
            elif isinstance(item, ipc.WorkerGone):
                self.ledger.worker_gone(item.entity_key)
        if finishes:
            self._finish(finishes)
        if retries:
            self._retry(port, port.generation, retries)
        if dispatches:
            generation = port.generation
            self.wal.dispatch(
                dispatches, lambda result: self._dispatched(port, generation, dispatches, result)
            )
        if submits:
            self.submit(submits)

    def _shard_call(self, port: ShardPort, item: ipc.Submit) -> Call:
        generation = port.generation

        def reply(result: SendResult) -> None:
            # A reply for a shard that has died since would reach the wrong request id.
            if port.send is not None and port.generation == generation:
                port.send(
                    ipc.SubmitResult(
                        item.request_id, result.ok, result.message_id, result.reply, result.error
                    )
                )

        env = Envelope(
            item.entity_type, item.message, item.entity_id, item.payload, message_id=item.message_id
        )
        return Call(env, item.wait, item.timeout_ms, reply, item.caller)

    def _dispatched(
        self, port: ShardPort, generation: int, ids: list[str], outcomes: list[Outcome]
    ) -> None:
        stale = port.generation != generation  # the shard that asked has died since
        never_started: list[LiveMessage] = []
        for mid, outcome in zip(ids, outcomes, strict=True):
            msg = self.ledger.live.get(mid)
            answer = self._dispatch_answer(mid, msg, outcome, never_started, stale=stale)
            if not stale and port.send is not None:
                port.send(answer)
        self.lifecycle.undispatch(never_started)
        if stale:
            self.lifecycle.try_open(self.ledger.ports.index(port))

    def _dispatch_answer(
        self,
        mid: str,
        msg: LiveMessage | None,
        outcome: Outcome,
        never_started: list[LiveMessage],
        *,
        stale: bool,
    ) -> ipc.DispatchResult:
        """Apply a dispatch's outcome to ``msg``; what the shard that asked is told."""
        match outcome:
            case Applied():
                if msg is not None:
                    msg.state = State.DISPATCHED
                    if stale:  # the go-ahead never reached a live shard
                        never_started.append(msg)
                return ipc.DispatchResult(mid, True)
            case Failed(error):  # not known to have applied: ask again
                if msg is not None and msg.state == State.DISPATCHING:
                    msg.state = State.ENQUEUED
                return ipc.DispatchResult(mid, False, error.to_dict(), again=True)
            case Refused(state=LogState.FENCED):
                # Declared dead: its messages belong to their new owners now. Never run.
                self._fenced()
                if msg is not None:
                    self.ledger.drop(msg, failure(mid, _fenced_error(mid)))
                return ipc.DispatchResult(mid, False, _fenced_error(mid).to_dict())
            case Refused(state=LogState.DISPATCHED) if msg is not None:
                # An earlier dispatch of it landed although its reply was lost; the shard
                # was told to wait, so it never started: take the mark back, ask again.
                if msg.state not in (State.UNDISPATCHING, State.INTERRUPTING):
                    msg.state = State.DISPATCHED
                    never_started.append(msg)
                return ipc.DispatchResult(mid, False, None, again=True)
            case Refused(state):
                problem = errors.AqError(
                    f"message {mid} was {state} in the write-ahead log, not enqueued, "
                    "so it was not run"
                )
                if msg is not None:
                    log.error("%s", problem.message)
                    self.ledger.drop(msg, failure(mid, problem))
                return ipc.DispatchResult(mid, False, problem.to_dict())

    def _retry(
        self, port: ShardPort, generation: int, retries: list[tuple[LiveMessage, ipc.Retry]]
    ) -> None:
        entries = [RetryEntry(m.message_id, msgspec.msgpack.encode(r.error)) for m, r in retries]

        def done(outcomes: list[Outcome]) -> None:
            stale = port.generation != generation
            for (msg, retry), outcome in zip(retries, outcomes, strict=True):
                answer = self._retry_answer(msg, retry, outcome)
                if not stale and port.send is not None:
                    port.send(answer)
            if stale:
                # The shard died waiting: what is still `dispatched` ran, so it is
                # interrupted; what is `enqueued` again goes to the restarted shard.
                self.lifecycle.interrupt([m for m, _ in retries if m.state == State.DISPATCHED])
                self.lifecycle.try_open(self.ledger.ports.index(port))

        self.wal.retry(entries, done)

    def _retry_answer(
        self, msg: LiveMessage, retry: ipc.Retry, outcome: Outcome
    ) -> ipc.RetryResult:
        """Apply a retry's outcome to ``msg``; what its shard is told."""
        match outcome:
            # `enqueued` already: an earlier commit of this retry landed, its reply lost
            case Applied() | Refused(state=LogState.ENQUEUED):
                msg.state, msg.attempt, msg.started = State.ENQUEUED, msg.attempt + 1, False
                log.info(
                    "%s %s of %s failed (%s); attempt %d follows",
                    msg.message,
                    msg.message_id,
                    msg.key,
                    str(retry.error.get("message", ""))[:200],
                    msg.attempt,
                )
                return ipc.RetryResult(msg.message_id, True)
            case Failed(error):  # still `dispatched`: ask again
                msg.state = State.DISPATCHED
                return ipc.RetryResult(msg.message_id, False, error.to_dict(), again=True)
            case Refused(state):
                problem = errors.AqError(
                    f"message {msg.message_id} was {state} in the log when its retry "
                    "was recorded; it is not run again"
                )
                log.error("%s", problem.message)
                self.ledger.drop(msg, failure(msg.message_id, problem))
                return ipc.RetryResult(msg.message_id, False, problem.to_dict())

    def _finish(self, finishes: list[tuple[LiveMessage, ipc.Outcome]]) -> None:
        entries = [
            FinishEntry(
                msg.message_id,
                LogState.COMPLETED if o.ok else LogState.FAILED,
                o.reply,
                msgspec.msgpack.encode(o.error) if o.error else b"",
                dead=not o.ok,  # a shard reports failure only once no attempt is left
            )
            for msg, o in finishes
        ]
        self.wal.finish(entries, lambda result: self._finished(finishes, result))

    def _finished(
        self, finishes: list[tuple[LiveMessage, ipc.Outcome]], statuses: list[Outcome]
    ) -> None:
        again: list[tuple[LiveMessage, ipc.Outcome]] = []
        for (msg, outcome), status in zip(finishes, statuses, strict=True):
            match status:
                case Failed():
                    # The handler ran but its outcome is not durable yet: keep trying; the
                    # entry stays `dispatched` meanwhile (never guessed, never re-run).
                    again.append((msg, outcome))
                    continue
                case Refused(state) if state not in (LogState.COMPLETED, LogState.FAILED):
                    # (either of those: a retried commit found its own outcome)
                    log.error(
                        "outcome of %s not recorded: it was %s in the log", msg.message_id, state
                    )
            labels = (msg.entity_type,)
            m = self.metrics
            (m.completed if outcome.ok else m.failed).inc(labels)
            if not outcome.ok:
                m.dead_lettered.inc((msg.entity_type, "exhausted"))
                _log_failure(msg, outcome.error or {})
            if outcome.started_at:
                m.queue_wait.observe(labels, max(outcome.started_at - msg.enqueued_at, 0.0))
                m.handler_time.observe(labels, outcome.duration_s)
            if outcome.ok:
                self.ledger.drop_each(msg, reply_in_callers_type(msg.message_id, outcome.reply))
            else:
                self.ledger.drop(msg, SendResult(msg.message_id, False, error=outcome.error))
        if again:
            self._loop.get().call_later(LOG_RETRY_S, self._finish, again)

    def running_shards(self) -> set[int]:
        """Shards that may be running a handler (a message of theirs is `dispatched`)."""
        return {
            m.shard
            for m in self.ledger.live.values()
            if m.state in (State.DISPATCHED, State.DISPATCHING, State.FINISHING)
        }

    def _fenced(self) -> None:
        if self.on_fenced is not None:
            self.on_fenced()

    def abandon_waiters(self) -> None:
        """At shutdown: nobody will answer the remaining waiters later, so answer now."""
        for msg in list(self.ledger.live.values()):
            if not msg.waiters:
                continue
            # FINISHING / RETRYING: it ran, its outcome never became durable; the next
            # start finds it `dispatched` and dead-letters it.
            if msg.state in (
                State.DISPATCHED,
                State.INTERRUPTING,
                State.FINISHING,
                State.RETRYING,
            ):
                error: errors.AqError = errors.Interrupted(
                    f"the node stopped while message {msg.message_id} may have been running; "
                    "it will be dead-lettered, not run again"
                )
            else:
                error = errors.Draining(
                    f"the node stopped before message {msg.message_id} ran; it stays in the "
                    "log and runs when the node starts again (in a cluster: on its entity's "
                    "new owner, soon)"
                )
            self.ledger.drop(msg, failure(msg.message_id, error), keep=True)


def _log_failure(msg: LiveMessage, error: dict[str, Any]) -> None:
    """A handler failure that ends a message (no attempt left) is dead-lettered: say so in
    the node's log; its traceback at debug level (``verbose = true``)."""
    log.warning(
        "%s %s of %s failed after %d attempt(s) and was dead-lettered (exhausted): %s",
        msg.message,
        msg.message_id,
        msg.key,
        msg.attempt,
        str(error.get("message", "no error given"))[:500],
    )
    trace = error.get("remote_traceback")
    if trace:
        log.debug("%s %s traceback:\n%s", msg.message, msg.message_id, trace)


def _fenced_error(message_id: str) -> errors.AqError:
    return errors.Unavailable(
        f"this node's group declared it dead and moved its entities to other nodes, so "
        f"its log refused message {message_id}; send it to another node of the group "
        f"(same message_id)",
        message_id=message_id,
    )


def _utf8_size(text: str, limit: int) -> int:
    """``text``'s size in UTF-8, exactly when it could be over ``limit``: a character is
    at most 4 bytes, so short ids (nearly all) cost no encoding."""
    if len(text) * 4 <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
