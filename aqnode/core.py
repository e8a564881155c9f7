"""The supervisor's message flow: validate, admit, log, route, dispatch, finish, reply.

Everything here runs on the supervisor's event loop and is callback-driven: a batch of
calls goes to the write-ahead log as one request and comes back in commit order, which
is what keeps FIFO per sender without a lock. The core never runs entity code; it keeps
one record per live message (enqueued or dispatched) so that it can redeliver a
restarted shard's queue and answer waiters.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aqnode import errors, ipc
from aqnode.bus import Envelope, SendResult
from aqnode.catalogue import JSON, Catalogue
from aqnode.config import NodeConfig
from aqnode.router import HashRing, entity_key
from aqnode.wal import EnqueueEntry, FinishEntry, WriteAheadLog

log = logging.getLogger("aqnode.core")

Reply = Callable[[SendResult], None]
FINISH_RETRY_S = 0.2  #: seconds between attempts to record an outcome while Redis is away


@dataclass(slots=True)
class Call:
    """One send, from a client stream or a handler's bus."""

    envelope: Envelope
    wait: bool
    timeout_ms: int
    reply: Reply
    caller: str = ""  # the sending handler's entity key, for SELF_WAIT


@dataclass(slots=True)
class Waiter:
    reply: Reply
    content_type: str
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class LiveMessage:
    message_id: str
    entity_type: str
    message: str
    entity_id: str
    key: str
    payload: bytes
    enqueued_at: float
    shard: int
    state: str = "enqueued"
    attempt: int = 1
    waiters: list[Waiter] = field(default_factory=list)

    def deliver_item(self) -> ipc.Deliver:
        return ipc.Deliver(
            self.message_id,
            self.entity_type,
            self.message,
            self.entity_id,
            self.payload,
            self.enqueued_at,
            self.attempt,
        )


@dataclass(slots=True)
class _Admitted:
    call: Call
    entity_type: str
    entity_id: str
    key: str
    message_id: str
    payload: bytes


class ShardPort:
    """What the core needs of a shard: send it items, if it is up."""

    def __init__(self) -> None:
        self.send: Callable[[Any], None] | None = None  # None while the shard is down


class NodeCore:
    def __init__(self, config: NodeConfig, catalogue: Catalogue, wal: WriteAheadLog, shards: int):
        self.config = config
        self.catalogue = catalogue
        self.wal = wal
        self.ring = HashRing(shards)
        self.ports = [ShardPort() for _ in range(shards)]
        self.live: dict[str, LiveMessage] = {}
        self.depth: dict[str, int] = {}  # entity key -> live messages (admitted, not finished)
        self.workers: set[str] = set()  # entity keys with a worker in some shard
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(5)
        self._entity_limits = {
            name: cfg.worker_max_queue_depth for name, cfg in config.entities.items()
        }
        self._reply_timeouts = {name: cfg.reply_timeout_ms for name, cfg in config.entities.items()}
        self._default_reply_timeout = config.entity("").reply_timeout_ms
        self.counters: dict[str, int] = {"enqueued": 0, "completed": 0, "failed": 0, "rejected": 0}

    # ---- sends -----------------------------------------------------------------------

    def submit(self, calls: list[Call]) -> None:
        """Validate and admit ``calls`` in order, then log them as one group-commit batch."""
        admitted: list[_Admitted] = []
        for call in calls:
            try:
                admitted_call = self._admit(call)
            except errors.AqError as exc:
                self.counters["rejected"] += 1
                call.reply(_failure("", exc))
                continue
            if admitted_call is not None:
                admitted.append(admitted_call)
        if not admitted:
            return
        now = time.time()
        entries = [
            EnqueueEntry(
                a.message_id, a.entity_type, a.call.envelope.message, a.entity_id, a.payload, now
            )
            for a in admitted
        ]
        self.wal.enqueue(entries, lambda result: self._logged(admitted, now, result))

    def _admit(self, call: Call) -> _Admitted | None:
        if self.draining:
            raise errors.Draining(
                "the node is shutting down and takes no new messages; "
                "retry on another node or after it restarts"
            )
        env = call.envelope
        spec, entity_id, payload = self.catalogue.validate(
            env.entity_type, env.message, env.entity_id, env.payload, env.content_type
        )
        key = entity_key(spec.entity_type, entity_id)
        if call.wait and call.caller == key:
            raise errors.SelfWait(
                f"a handler of {key} waited on its own entity, which would wait for ever; "
                "use enqueue instead of enqueue_and_wait"
            )
        message_id = env.message_id or f"{self._id_prefix}-{next(self._ids):x}"
        known = self.live.get(message_id)
        if known is not None:  # an idempotency key already live here: attach, write nothing
            self._answer_when_done(known, call)
            return None
        self._check_limits(spec.entity_type, key)
        self.depth[key] = self.depth.get(key, 0) + 1
        self.workers.add(key)
        return _Admitted(call, spec.entity_type, entity_id, key, message_id, payload)

    def _check_limits(self, etype: str, key: str) -> None:
        depth = self.depth.get(key, 0)
        limit = self._entity_limits.get(etype, 0)
        if limit and depth > limit:  # `depth` already counts the one running
            raise errors.BackpressureError(
                f"{key} already has {depth - 1} messages waiting, its limit "
                f"([entities.{etype}] worker_max_queue_depth = {limit}); retry later",
                code=errors.QUEUE_DEPTH_EXCEEDED,
            )
        total = self.config.max_total_queue_depth
        if total and len(self.live) >= total:
            raise errors.BackpressureError(
                f"the node holds {len(self.live)} queued messages, its limit "
                f"(max_total_queue_depth = {total}); retry later",
                code=errors.QUEUE_DEPTH_EXCEEDED,
            )
        workers = self.config.max_total_workers
        if workers and key not in self.workers and len(self.workers) >= workers:
            raise errors.BackpressureError(
                f"the node runs {len(self.workers)} entity workers, its limit "
                f"(max_total_workers = {workers}); {key} has none yet; retry later",
                code=errors.WORKER_LIMIT_EXCEEDED,
            )

    def _release(self, key: str) -> None:
        left = self.depth.get(key, 0) - 1
        if left > 0:
            self.depth[key] = left
        else:
            self.depth.pop(key, None)

    def _logged(
        self, admitted: list[_Admitted], now: float, result: list[Any] | errors.AqError
    ) -> None:
        if isinstance(result, errors.AqError):
            for a in admitted:
                self._release(a.key)
                a.call.reply(_failure(a.message_id, result))
            return
        for a, outcome in zip(admitted, result, strict=True):
            if not isinstance(outcome, int):  # the id was known to the log already
                self._release(a.key)
                self._duplicate(a, str(outcome))
                continue
            self.counters["enqueued"] += 1
            shard = self.ring.shard_for(a.key)
            msg = LiveMessage(
                a.message_id,
                a.entity_type,
                a.call.envelope.message,
                a.entity_id,
                a.key,
                a.payload,
                now,
                shard,
            )
            self.live[a.message_id] = msg
            port = self.ports[shard]
            if port.send is not None:
                port.send(msg.deliver_item())
            if a.call.wait:
                self._add_waiter(msg, a.call)
            else:
                a.call.reply(SendResult(a.message_id, True))

    def _duplicate(self, a: _Admitted, state: str) -> None:
        known = self.live.get(a.message_id)
        if known is not None:
            self._answer_when_done(known, a.call)
        elif not a.call.wait:
            a.call.reply(SendResult(a.message_id, True))
        else:
            asyncio.get_running_loop().create_task(
                self._answer_from_log(a.message_id, a.call, state)
            )

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
            call.reply(_failure(message_id, exc))
            return
        state = fields.get("state", state)
        if state == "completed":
            call.reply(_converted(message_id, fields.get("reply", b""), call.envelope.content_type))
        elif state == "failed" and fields.get("error"):
            call.reply(SendResult(message_id, False, error=msgspec.msgpack.decode(fields["error"])))
        else:
            call.reply(
                _failure(
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
        waiter.timer = asyncio.get_running_loop().call_later(
            timeout_ms / 1000, self._wait_timed_out, msg, waiter, timeout_ms
        )
        msg.waiters.append(waiter)

    def _wait_timed_out(self, msg: LiveMessage, waiter: Waiter, timeout_ms: int) -> None:
        if waiter in msg.waiters:
            msg.waiters.remove(waiter)
            waiter.reply(
                _failure(
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
        submits: list[Call] = []
        port = self.ports[shard]
        for item in items:
            if isinstance(item, ipc.Dispatch):
                dispatches.append(item.message_id)
            elif isinstance(item, ipc.Outcome):
                msg = self.live.get(item.message_id)
                if msg is not None:
                    finishes.append((msg, item))
            elif isinstance(item, ipc.Submit):
                submits.append(self._shard_call(port, item))
            elif isinstance(item, ipc.WorkerGone) and not self.depth.get(item.entity_key):
                self.workers.discard(item.entity_key)
        if finishes:
            self._finish(finishes)
        if dispatches:
            self.wal.dispatch(dispatches, lambda result: self._dispatched(port, dispatches, result))
        if submits:
            self.submit(submits)

    def _shard_call(self, port: ShardPort, item: ipc.Submit) -> Call:
        def reply(result: SendResult) -> None:
            if port.send is not None:
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
        self, port: ShardPort, ids: list[str], result: list[Any] | errors.AqError
    ) -> None:
        if isinstance(result, errors.AqError):
            error = result.to_dict()
            if port.send is not None:
                for mid in ids:
                    port.send(ipc.DispatchResult(mid, False, error))
            return
        for mid, outcome in zip(ids, result, strict=True):
            msg = self.live.get(mid)
            if outcome == 1:
                if msg is not None:
                    msg.state = "dispatched"
                if port.send is not None:
                    port.send(ipc.DispatchResult(mid, True))
                continue
            problem = errors.AqError(
                f"message {mid} was {outcome} in the write-ahead log, not enqueued, "
                "so it was not run"
            )
            log.error("%s", problem.message)
            if msg is not None:
                self._drop(msg, _failure(mid, problem))
            if port.send is not None:
                port.send(ipc.DispatchResult(mid, False, problem.to_dict()))

    def _finish(self, finishes: list[tuple[LiveMessage, ipc.Outcome]]) -> None:
        entries = [
            FinishEntry(
                msg.message_id,
                "completed" if o.ok else "failed",
                o.reply,
                msgspec.msgpack.encode(o.error) if o.error else b"",
            )
            for msg, o in finishes
        ]
        self.wal.finish(entries, lambda result: self._finished(finishes, result))

    def _finished(
        self, finishes: list[tuple[LiveMessage, ipc.Outcome]], result: list[Any] | errors.AqError
    ) -> None:
        if isinstance(result, errors.AqError):
            # The handler ran but its outcome is not durable yet: keep trying, the message
            # stays `dispatched` meanwhile (never guessed, never re-run).
            asyncio.get_running_loop().call_later(FINISH_RETRY_S, self._finish, finishes)
            return
        for (msg, outcome), status in zip(finishes, result, strict=True):
            if status != 1:
                log.error(
                    "outcome of %s not recorded: it was %s in the log", msg.message_id, status
                )
            self.counters["completed" if outcome.ok else "failed"] += 1
            if outcome.ok:
                self._drop_each(msg, _reply_in_callers_type(msg.message_id, outcome.reply))
            else:
                self._drop(msg, SendResult(msg.message_id, False, error=outcome.error))

    def _drop(self, msg: LiveMessage, result: SendResult) -> None:
        self._drop_each(msg, lambda _w: result)

    def _drop_each(self, msg: LiveMessage, result_for: Callable[[Waiter], SendResult]) -> None:
        if self.live.pop(msg.message_id, None) is not None:
            self._release(msg.key)
        for waiter in msg.waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiter.reply(result_for(waiter))
        msg.waiters.clear()

    # ---- shard lifecycle -------------------------------------------------------------

    def shard_up(self, shard: int, send: Callable[[Any], None]) -> None:
        """A (re)started shard is ready: hand it its queued messages in log order."""
        port = self.ports[shard]
        port.send = send
        for msg in self.live.values():
            if msg.shard == shard and msg.state == "enqueued":
                send(msg.deliver_item())

    def shard_down(self, shard: int) -> None:
        """A shard died: what it may have started is interrupted; its queue waits for it."""
        self.ports[shard].send = None
        for msg in list(self.live.values()):
            if msg.shard == shard and msg.state == "dispatched":
                self._drop(
                    msg,
                    _failure(
                        msg.message_id,
                        errors.Interrupted(
                            f"shard {shard} died while message {msg.message_id} may have "
                            "been running; it was not run again (strictly once, fail if "
                            "interrupted)"
                        ),
                    ),
                )


def _failure(message_id: str, exc: errors.AqError) -> SendResult:
    return SendResult(message_id, False, error=exc.to_dict())


def _reply_in_callers_type(message_id: str, reply: bytes) -> Callable[[Waiter], SendResult]:
    def result_for(waiter: Waiter) -> SendResult:
        return _converted(message_id, reply, waiter.content_type)

    return result_for


def _converted(message_id: str, reply: bytes, content_type: str) -> SendResult:
    """Give the reply in the content type the caller sent (JSON callers get JSON)."""
    if content_type == JSON and reply:
        return SendResult(
            message_id, True, msgspec.json.encode(msgspec.msgpack.decode(reply)), JSON
        )
    return SendResult(message_id, True, reply)
