"""What the supervisor holds of its messages and shards, and the counts its limits read.

One object that the message flow (``core.py``) and the shard lifecycle
(``lifecycle.py``) both write to: a message is counted once when it is admitted,
recovered or adopted and released once when it is finished, whichever of them does it,
so the limits (``worker_max_queue_depth``, ``max_total_queue_depth``,
``max_total_workers``) cannot drift. Runs on the supervisor's event loop only.
"""

from __future__ import annotations

from collections.abc import Callable

from aqnode.bus import SendResult
from aqnode.supervisor.live import LiveMessage, ShardPort, Waiter


class Ledger:
    def __init__(self, shards: int) -> None:
        self.ports = [ShardPort() for _ in range(shards)]
        self.live: dict[str, LiveMessage] = {}  # message id -> its record, until finished
        self.depth: dict[str, int] = {}  # entity key -> live messages (admitted, not finished)
        #: entity keys a shard holds a worker for (a Deliver went out, no WorkerGone since)
        self.workers: dict[str, int] = {}  # entity key -> its shard
        #: entity keys with unfinished messages and no worker yet (for max_total_workers)
        self.new_entities: set[str] = set()
        self.queued_total = 0  #: unfinished messages, admitted ones included

    def track(self, key: str) -> None:
        """Count one more unfinished message of ``key`` (admitted, recovered, adopted)."""
        self.depth[key] = self.depth.get(key, 0) + 1
        self.queued_total += 1
        if key not in self.workers:
            self.new_entities.add(key)

    def release(self, key: str) -> None:
        """Count one message of ``key`` less (finished, or never logged)."""
        self.queued_total -= 1
        left = self.depth.get(key, 0) - 1
        if left > 0:
            self.depth[key] = left
        else:
            self.depth.pop(key, None)
            self.new_entities.discard(key)

    def deliver(self, msg: LiveMessage) -> None:
        """Hand ``msg`` to its shard (whose port is open); its entity now has a worker."""
        port = self.ports[msg.shard]
        assert port.send is not None
        port.send(msg.deliver_item())
        msg.held = False
        self.workers[msg.key] = msg.shard
        self.new_entities.discard(msg.key)

    def worker_gone(self, key: str) -> None:
        """A shard tore down the idle worker of ``key``. Not if ``key`` has unfinished
        messages: one was delivered as the WorkerGone crossed it, and makes a new worker."""
        if not self.depth.get(key):
            self.workers.pop(key, None)

    def workers_died(self, shard: int) -> None:
        """``shard`` died with its workers: the entities of its unfinished messages have
        none now (they count as new for max_total_workers); the messages stay counted."""
        for key in [k for k, s in self.workers.items() if s == shard]:
            del self.workers[key]
        for msg in self.live.values():
            if msg.shard == shard:
                self.new_entities.add(msg.key)

    def drop(self, msg: LiveMessage, result: SendResult, *, keep: bool = False) -> None:
        """Answer every waiter with ``result``; unless ``keep``, forget the message."""
        self.drop_each(msg, lambda _w: result, keep=keep)

    def drop_each(
        self, msg: LiveMessage, result_for: Callable[[Waiter], SendResult], *, keep: bool = False
    ) -> None:
        """Answer every waiter; unless ``keep``, forget the message (it is finished)."""
        if not keep and self.live.pop(msg.message_id, None) is not None:
            self.release(msg.key)
        for waiter in msg.waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiter.reply(result_for(waiter))
        msg.waiters.clear()
