"""What the supervisor keeps per message and per shard, and how replies are shaped."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from aqnode import errors, ipc
from aqnode.bus import Envelope, SendResult
from aqnode.catalogue import JSON

Reply = Callable[[SendResult], None]


class State(enum.StrEnum):
    """Where the supervisor sees a live message. The values are the words that appear in
    replies and the node's log, so they stay as they are."""

    ENQUEUED = "enqueued"
    DISPATCHED = "dispatched"
    FINISHING = "finishing"  # it ran; its outcome is on its way to the log
    # In flight: asked of the log, whose answer has not come back yet.
    DISPATCHING = "dispatching"
    RETRYING = "retrying"
    INTERRUPTING = "interrupting"
    UNDISPATCHING = "undispatching"


#: States whose next state the log has not confirmed yet: a restarted shard gets its
#: queue only once none of its messages is in one of them.
IN_FLIGHT: frozenset[State] = frozenset(
    {State.DISPATCHING, State.RETRYING, State.INTERRUPTING, State.UNDISPATCHING}
)
#: a `dispatched` mark being taken back or an interruption in flight: a Dispatch asked
#: meanwhile is answered "again", never sent to the log (a retry of the transition could
#: otherwise undo a mark the worker was told to use)
TAKING_BACK: frozenset[State] = frozenset({State.UNDISPATCHING, State.INTERRUPTING})


@dataclass(slots=True)
class Call:
    """One send, from a client stream or a handler's bus."""

    envelope: Envelope
    wait: bool
    timeout_ms: int
    reply: Reply
    caller: str = ""  # the sending handler's entity key, for SELF_WAIT
    #: cluster mode, set on a call a peer forwarded: the peer's epoch and hops so far
    epoch: int = 0
    hops: int = 0
    reroutes: int = 0  #: times this node sent it back through routing (a stale epoch)
    order: int = 0  #: cluster mode: when it reached routing, so a reroute keeps its place
    #: cluster mode: a dead node's message moving to its entity's new owner (adoption);
    #: it goes ahead of the calls for that entity waiting here for the master
    adopted: bool = False
    adopted_last: bool = False  #: ... and the last of its entity's moved messages
    fencing_token: int = 0  #: ... with the entity's token on its new owner


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
    state: State = State.ENQUEUED
    held: bool = True  # the shard does not have it (never delivered, or its shard died)
    #: the shard said Started for the current `dispatched` mark: the handler may have run,
    #: so the message is finished or interrupted, never taken back or delivered again
    started: bool = False
    attempt: int = 1
    waiters: list[Waiter] = field(default_factory=list)
    token: int = 0  #: cluster mode: the entity's fencing token here (ctx.fencing_token)

    def deliver_item(self) -> ipc.Deliver:
        return ipc.Deliver(
            self.message_id,
            self.entity_type,
            self.message,
            self.entity_id,
            self.payload,
            self.enqueued_at,
            self.attempt,
            self.state == State.DISPATCHED,
            self.token,
        )


@dataclass(slots=True)
class Admitted:
    call: Call
    entity_type: str
    entity_id: str
    key: str
    message_id: str
    payload: bytes
    shard: int
    generation: int  # of the shard's port when admitted
    dispatch: bool  # the entity was idle: logged straight as `dispatched`

    def live_message(self, enqueued_at: float, state: State) -> LiveMessage:
        return LiveMessage(
            self.message_id,
            self.entity_type,
            self.call.envelope.message,
            self.entity_id,
            self.key,
            self.payload,
            enqueued_at,
            self.shard,
            state=state,
        )


class ShardPort:
    """What the core needs of a shard: send it items, if it is up.

    ``generation`` changes with every (re)start, so a log result that comes back after its
    shard died is recognised as stale. ``open`` is false until a restarted shard has been
    handed its queue in log order; new messages wait behind it meanwhile (FIFO).
    """

    def __init__(self) -> None:
        self.send: Callable[[ipc.ToShard], None] | None = None  # None while the shard is down
        self.generation = 0
        self.open = False


def failure(message_id: str, exc: errors.AqError) -> SendResult:
    return SendResult(message_id, False, error=exc.to_dict())


def reply_in_callers_type(message_id: str, reply: bytes) -> Callable[[Waiter], SendResult]:
    def result_for(waiter: Waiter) -> SendResult:
        return converted(message_id, reply, waiter.content_type)

    return result_for


def converted(message_id: str, reply: bytes, content_type: str) -> SendResult:
    """Give the reply in the content type the caller sent (JSON callers get JSON)."""
    if content_type == JSON and reply:
        return SendResult(
            message_id, True, msgspec.json.encode(msgspec.msgpack.decode(reply)), JSON
        )
    return SendResult(message_id, True, reply)
