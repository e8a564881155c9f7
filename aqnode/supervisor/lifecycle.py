"""A shard's death and rebirth, and the log's recovery, as the supervisor's core sees them.

A dead shard's `dispatched` messages are interrupted (dead-lettered, or requeued where
`on_interrupt = "retry"`); its queue is handed to the restarted shard in log order once
nothing of it is still in flight to the log. A `dispatched` mark whose go-ahead never
reached a live shard is taken back (`undispatch`): that message provably never started.
The same paths serve recovery at start and transitions whose reply a Redis failure hid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from aqnode import errors, ipc
from aqnode.config import NodeConfig
from aqnode.supervisor.ledger import Ledger
from aqnode.supervisor.live import IN_FLIGHT, Admitted, LiveMessage, State, failure
from aqnode.supervisor.metrics import NodeMetrics
from aqnode.util.ring import HashRing, entity_key
from aqnode.wal import Applied, Failed, InterruptEntry, LogState, Outcome, Refused, WriteAheadLog

log = logging.getLogger("aqnode.core")

LOG_RETRY_S = 0.2  #: seconds between attempts to record a transition while Redis is away
#: on_interrupt = "retry" re-runs an interrupted message at most this many times in all
#: (or max_attempts, if higher), so that a message that kills its shard cannot loop.
INTERRUPT_RETRY_FLOOR = 3


class ShardLifecycle:
    """Driven by :class:`~aqnode.supervisor.core.NodeCore`; keeps its counts in the
    ledger they share, and the enqueues whose outcome is unknown (``uncertain``)."""

    def __init__(
        self,
        config: NodeConfig,
        wal: WriteAheadLog,
        ring: HashRing,
        ledger: Ledger,
        metrics: NodeMetrics,
    ) -> None:
        self.config = config
        self.wal = wal
        self.ring = ring
        self.ledger = ledger
        self.metrics = metrics
        #: enqueues whose commit failed on a broken connection: they may be in the log
        #: after all, and are adopted by :meth:`adopt_uncertain` once Redis answers
        self.uncertain: list[Admitted] = []

    # ---- shard lifecycle -------------------------------------------------------------

    def shard_up(self, shard: int, send: Callable[[ipc.ToShard], None]) -> None:
        """A (re)started shard is ready: it gets its queue once nothing is in flight."""
        port = self.ledger.ports[shard]
        port.send = send
        port.generation += 1
        port.open = False
        self.try_open(shard)

    def try_open(self, shard: int) -> None:
        """Hand a restarted shard its queued messages in log order, then let new ones flow.

        Waits while any of its messages is still in flight to the log: one of them might
        come back `enqueued` and must run before the entity's later messages.
        """
        port = self.ledger.ports[shard]
        if port.open or port.send is None:
            return
        mine = [m for m in self.ledger.live.values() if m.shard == shard]
        if any(m.state in IN_FLIGHT for m in mine):
            return
        port.open = True
        for msg in mine:  # in log order; what the shard already has is not sent again
            if msg.state == State.ENQUEUED and msg.held:
                self.ledger.deliver(msg)

    def shard_down(self, shard: int, *, read_to_the_end: bool) -> None:
        """A shard died: what it started is interrupted; the rest waits for its successor.

        ``read_to_the_end``: every frame the dead shard wrote was read, so a `dispatched`
        message without a ``Started`` provably never ran and is taken back (it runs on the
        restarted shard, in order, once). Otherwise every `dispatched` one is interrupted.
        """
        port = self.ledger.ports[shard]
        port.send = None
        port.open = False
        port.generation += 1
        # Its workers died with it; its queued messages are its successor's to receive.
        self.ledger.workers_died(shard)
        cut_off: list[LiveMessage] = []
        never_started: list[LiveMessage] = []
        for msg in self.ledger.live.values():
            if msg.shard != shard:
                continue
            msg.held = True
            if msg.state == State.DISPATCHED:
                (cut_off if msg.started or not read_to_the_end else never_started).append(msg)
        self.interrupt(cut_off)
        self.undispatch(never_started)

    # ---- interrupted: dead-letter or requeue -------------------------------------------

    def interrupt(self, messages: list[LiveMessage]) -> None:
        """Dead-letter (or, with on_interrupt = "retry", requeue) messages a crash cut off."""
        if not messages:
            return
        entries = []
        for msg in messages:
            first = msg.state != State.INTERRUPTING
            msg.state = State.INTERRUPTING
            error = errors.Interrupted(
                f"shard {msg.shard} died while message {msg.message_id} may have been running; "
                "the system does not run it again (strictly once, fail if interrupted)"
            )
            retry = self._retries_on_interrupt(msg)
            if first and not retry:  # its fate is sealed: tell waiters now, not after the log
                self.ledger.drop(msg, failure(msg.message_id, error), keep=True)
            entries.append(
                InterruptEntry(msg.message_id, retry, msgspec.msgpack.encode(error.to_dict()))
            )
        self.wal.interrupt(entries, lambda result: self._interrupted(messages, result))

    def _retries_on_interrupt(self, msg: LiveMessage) -> bool:
        if self.config.entity(msg.entity_type).on_interrupt != "retry":
            return False
        limit = max(self.config.retry_for(msg.entity_type).max_attempts, INTERRUPT_RETRY_FLOOR)
        return msg.attempt < limit

    def _interrupted(self, messages: list[LiveMessage], outcomes: list[Outcome]) -> None:
        again: list[LiveMessage] = []
        for msg, outcome in zip(messages, outcomes, strict=True):
            match outcome:
                case Failed():  # not recorded: stays in flight, again
                    again.append(msg)
                case Applied(to=LogState.ENQUEUED):
                    msg.attempt += 1
                    log.warning(
                        "%s %s of %s was interrupted by a crash of shard %d; on_interrupt = "
                        '"retry": it runs again (attempt %d)',
                        msg.message,
                        msg.message_id,
                        msg.key,
                        msg.shard,
                        msg.attempt,
                    )
                    self._requeued(msg)
                case Applied() | Refused():
                    self._dead_lettered(msg, outcome)
        if again:
            asyncio.get_running_loop().call_later(LOG_RETRY_S, self.interrupt, again)
        for shard in {m.shard for m in messages}:
            self.try_open(shard)

    def _dead_lettered(self, msg: LiveMessage, outcome: Applied | Refused) -> None:
        """An interrupt that did not requeue: the message is over (or was not `dispatched`
        in the log, which is logged: it is not run again either way)."""
        if isinstance(outcome, Applied):  # to INTERRUPTED
            self.metrics.dead_lettered.inc((msg.entity_type, "interrupted"))
            log.warning(
                "%s %s of %s was interrupted by a crash of shard %d and "
                "dead-lettered (interrupted); it is not run again",
                msg.message,
                msg.message_id,
                msg.key,
                msg.shard,
            )
        else:
            log.error("interrupting %s: it was %s in the log", msg.message_id, outcome.state)
        self.ledger.drop(
            msg,
            failure(
                msg.message_id,
                errors.Interrupted(
                    f"message {msg.message_id} was interrupted by a crash and dead-lettered"
                ),
            ),
        )

    def _requeued(self, msg: LiveMessage) -> None:
        """``msg`` is `enqueued` again: hand it over now if its shard is open and lacks it
        (else the shard still has it at the head of its queue, or `_try_open` will)."""
        msg.state = State.ENQUEUED
        msg.started = False
        port = self.ledger.ports[msg.shard]
        if msg.held and port.open and port.send is not None:
            self.ledger.deliver(msg)

    # ---- never started: take the dispatched mark back ----------------------------------

    def undispatch(self, messages: list[LiveMessage]) -> None:
        """`dispatched` in the log, but no live shard ever got the go-ahead: back to
        `enqueued`, so that the message runs in its turn instead of being dead-lettered."""
        started = [m for m in messages if m.started]
        if started:  # may have run: never taken back (at most once), interrupted instead
            self.interrupt(started)
            messages = [m for m in messages if not m.started]
        if not messages:
            return
        for msg in messages:
            msg.state = State.UNDISPATCHING
        ids = [m.message_id for m in messages]
        self.wal.undispatch(ids, lambda result: self._undispatched(messages, result))

    def _undispatched(self, messages: list[LiveMessage], outcomes: list[Outcome]) -> None:
        again: list[LiveMessage] = []
        for msg, outcome in zip(messages, outcomes, strict=True):
            match outcome:
                case Failed():
                    again.append(msg)
                case Applied() | Refused(LogState.ENQUEUED):
                    # Refused(enqueued): an earlier try landed, its reply lost.
                    self._requeued(msg)
                case Refused(state):
                    log.error("taking back %s: it was %s in the log", msg.message_id, state)
                    self.ledger.drop(
                        msg,
                        failure(
                            msg.message_id,
                            errors.AqError(
                                f"message {msg.message_id} was {state} in the log; it was not run"
                            ),
                        ),
                    )
        if again:
            asyncio.get_running_loop().call_later(LOG_RETRY_S, self._undispatch_again, again)
        for shard in {m.shard for m in messages}:
            self.try_open(shard)

    def _undispatch_again(self, messages: list[LiveMessage]) -> None:
        """Retry only what is still being taken back and still live."""
        self.undispatch(
            [
                m
                for m in messages
                if m.state == State.UNDISPATCHING and self.ledger.live.get(m.message_id) is m
            ]
        )

    # ---- enqueues whose reply was lost -------------------------------------------------

    async def adopt_uncertain(self) -> int:
        """Look up enqueues whose outcome a Redis failure hid; run those that did land
        (their senders were told the outcome is unknown, so they queue behind newer
        messages). Returns how many were adopted."""
        pending, self.uncertain = self.uncertain, []
        if not pending:
            return 0
        try:
            states = await self.wal.states([a.message_id for a in pending])
        except errors.AqError:
            self.uncertain = pending + self.uncertain  # still away: try again later
            return 0
        adopted, never_started = 0, []
        for a, state in zip(pending, states, strict=True):
            known = a.message_id in self.ledger.live
            if state not in (State.ENQUEUED, State.DISPATCHED) or known:
                continue
            msg = a.live_message(time.time(), State(state))
            self.ledger.live[msg.message_id] = msg
            self.ledger.track(a.key)
            adopted += 1
            if msg.state == State.DISPATCHED:  # the fast path wrote it so; nobody ever ran it
                never_started.append(msg)
            else:
                port = self.ledger.ports[a.shard]
                if port.open and port.send is not None:
                    self.ledger.deliver(msg)
        self.undispatch(never_started)
        return adopted

    # ---- recovery --------------------------------------------------------------------

    async def recover(self, entries: list[dict[str, Any]]) -> tuple[int, int]:
        """Rebuild the live set from the log at start: `enqueued` entries run again in log
        order; `dispatched` ones are interrupted. Returns (requeued, interrupted)."""
        interrupted: list[LiveMessage] = []
        for fields in entries:
            if fields["state"] not in (State.ENQUEUED, State.DISPATCHED):
                continue
            msg = self._recovered(fields, State(fields["state"]))
            if msg.state == State.DISPATCHED:
                interrupted.append(msg)
            self.ledger.live[msg.message_id] = msg
            self.ledger.track(msg.key)
        if interrupted:
            self.interrupt(interrupted)
            await self.settle()
        requeued = sum(1 for m in self.ledger.live.values() if m.state == State.ENQUEUED)
        return requeued, len(interrupted)

    def _recovered(self, fields: dict[str, Any], state: State) -> LiveMessage:
        key = entity_key(fields["entity_type"], fields["entity_id"])
        attempts = int(fields.get("attempts", 0))
        return LiveMessage(
            fields["id"],
            fields["entity_type"],
            fields["message"],
            fields["entity_id"],
            key,
            fields["payload"],
            float(fields.get("enqueued_at", 0.0)),
            self.ring.shard_for(key),
            state=state,
            # a `dispatched` entry's interrupted run was its last counted attempt
            attempt=attempts if state == State.DISPATCHED else attempts + 1,
        )

    async def settle(self) -> None:
        """Wait until no message is in flight to the log (recovery's interrupts landed)."""
        while any(m.state in IN_FLIGHT for m in self.ledger.live.values()):
            await asyncio.sleep(0.01)
