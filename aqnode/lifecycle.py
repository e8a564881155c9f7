"""A shard's death and rebirth, and the log's recovery, as the supervisor's core sees them.

A dead shard's `dispatched` messages are interrupted (dead-lettered, or requeued where
`on_interrupt = "retry"`); its queue is handed to the restarted shard in log order once
nothing of it is still in flight to the log. The same interrupt path serves recovery at
start and transitions whose reply a Redis failure hid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from aqnode import errors
from aqnode.bus import SendResult
from aqnode.config import NodeConfig
from aqnode.live import SETTLED, Admitted, LiveMessage, ShardPort, failure
from aqnode.metrics import NodeMetrics
from aqnode.router import HashRing, entity_key
from aqnode.wal import InterruptEntry, WriteAheadLog

log = logging.getLogger("aqnode.core")

LOG_RETRY_S = 0.2  #: seconds between attempts to record a transition while Redis is away
#: on_interrupt = "retry" re-runs an interrupted message at most this many times in all
#: (or max_attempts, if higher), so that a message that kills its shard cannot loop.
INTERRUPT_RETRY_FLOOR = 3


class ShardLifecycle:
    """Mixed into :class:`~aqnode.core.NodeCore`, whose state it shares."""

    config: NodeConfig
    wal: WriteAheadLog
    ring: HashRing
    ports: list[ShardPort]
    live: dict[str, LiveMessage]
    depth: dict[str, int]
    workers: set[str]
    metrics: NodeMetrics
    uncertain: list[Admitted]

    def _drop(self, msg: LiveMessage, result: SendResult, *, keep: bool = False) -> None:
        raise NotImplementedError

    # ---- shard lifecycle -------------------------------------------------------------

    def shard_up(self, shard: int, send: Callable[[Any], None]) -> None:
        """A (re)started shard is ready: it gets its queue once nothing is in flight."""
        port = self.ports[shard]
        port.send = send
        port.generation += 1
        port.open = False
        self._try_open(shard)

    def _try_open(self, shard: int) -> None:
        """Hand a restarted shard its queued messages in log order, then let new ones flow.

        Waits while any of its messages is still in flight to the log: one of them might
        come back `enqueued` and must run before the entity's later messages.
        """
        port = self.ports[shard]
        if port.open or port.send is None:
            return
        mine = [m for m in self.live.values() if m.shard == shard]
        if any(m.state not in SETTLED for m in mine):
            return
        for msg in mine:
            if msg.state == "enqueued":
                port.send(msg.deliver_item())
        port.open = True

    def shard_down(self, shard: int) -> None:
        """A shard died: what it may have started is interrupted; its queue waits for it."""
        port = self.ports[shard]
        port.send = None
        port.open = False
        port.generation += 1
        self._interrupt(
            [m for m in self.live.values() if m.shard == shard and m.state == "dispatched"]
        )

    def _interrupt(self, messages: list[LiveMessage]) -> None:
        """Dead-letter (or, with on_interrupt = "retry", requeue) messages a crash cut off."""
        if not messages:
            return
        entries = []
        for msg in messages:
            msg.state = "interrupting"
            error = errors.Interrupted(
                f"shard {msg.shard} died while message {msg.message_id} may have been running; "
                "the system does not run it again (strictly once, fail if interrupted)"
            )
            retry = self._retries_on_interrupt(msg)
            if not retry:  # its fate is sealed: tell waiters now, not after the log write
                self._drop(msg, failure(msg.message_id, error), keep=True)
            entries.append(
                InterruptEntry(msg.message_id, retry, msgspec.msgpack.encode(error.to_dict()))
            )
        self.wal.interrupt(entries, lambda result: self._interrupted(messages, result))

    def _retries_on_interrupt(self, msg: LiveMessage) -> bool:
        if self.config.entity(msg.entity_type).on_interrupt != "retry":
            return False
        limit = max(self.config.retry_for(msg.entity_type).max_attempts, INTERRUPT_RETRY_FLOOR)
        return msg.attempt < limit

    def _interrupted(self, messages: list[LiveMessage], result: list[Any] | errors.AqError) -> None:
        if isinstance(result, errors.AqError):
            for msg in messages:
                msg.state = "dispatched"
            asyncio.get_running_loop().call_later(LOG_RETRY_S, self._interrupt, messages)
            return
        shards = set()
        for msg, outcome in zip(messages, result, strict=True):
            shards.add(msg.shard)
            if outcome == "enqueued":
                msg.state, msg.attempt = "enqueued", msg.attempt + 1
                continue
            if outcome == "interrupted":
                self.metrics.dead_lettered.inc((msg.entity_type, "interrupted"))
            else:
                log.error("interrupting %s: it was %s in the log", msg.message_id, outcome)
            self._drop(
                msg,
                failure(
                    msg.message_id,
                    errors.Interrupted(
                        f"message {msg.message_id} was interrupted by a crash and dead-lettered"
                    ),
                ),
            )
        for shard in shards:
            self._try_open(shard)

    async def adopt_uncertain(self) -> int:
        """Look up enqueues whose outcome a Redis failure hid; run those that did land
        (their senders were told they failed, so they queue behind newer messages).
        Returns how many were adopted."""
        pending, self.uncertain = self.uncertain, []
        if not pending:
            return 0
        try:
            states = await self.wal.states([a.message_id for a in pending])
        except errors.AqError:
            self.uncertain = pending + self.uncertain  # still away: try again later
            return 0
        adopted, lost = 0, []
        for a, state in zip(pending, states, strict=True):
            if state not in ("enqueued", "dispatched") or a.message_id in self.live:
                continue
            msg = a.live_message(time.time(), state)
            self.live[msg.message_id] = msg
            self.depth[a.key] = self.depth.get(a.key, 0) + 1
            self.workers.add(a.key)
            adopted += 1
            if state == "dispatched":
                lost.append(msg)
            else:
                port = self.ports[a.shard]
                if port.open and port.send is not None:
                    port.send(msg.deliver_item())
        self._interrupt(lost)
        return adopted

    # ---- recovery --------------------------------------------------------------------

    async def recover(self, entries: list[dict[str, Any]]) -> tuple[int, int]:
        """Rebuild the live set from the log at start: `enqueued` entries run again in log
        order; `dispatched` ones are interrupted. Returns (requeued, interrupted)."""
        interrupted: list[LiveMessage] = []
        for fields in entries:
            key = entity_key(fields["entity_type"], fields["entity_id"])
            msg = LiveMessage(
                fields["id"],
                fields["entity_type"],
                fields["message"],
                fields["entity_id"],
                key,
                fields["payload"],
                float(fields.get("enqueued_at", 0.0)),
                self.ring.shard_for(key),
                state=fields["state"],
                attempt=int(fields.get("attempts", 0)) + 1,
            )
            if msg.state == "dispatched":
                msg.attempt -= 1  # the interrupted run was that attempt
                interrupted.append(msg)
            elif msg.state != "enqueued":
                continue
            self.live[msg.message_id] = msg
            self.depth[key] = self.depth.get(key, 0) + 1
            self.workers.add(key)
        if interrupted:
            self._interrupt(interrupted)
            await self._settled()
        requeued = sum(1 for m in self.live.values() if m.state == "enqueued")
        return requeued, len(interrupted)

    async def _settled(self) -> None:
        """Wait until no message is in flight to the log (recovery's interrupts landed)."""
        while any(m.state not in SETTLED for m in self.live.values()):
            await asyncio.sleep(0.01)
