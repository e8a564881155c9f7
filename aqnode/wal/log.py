"""The write-ahead log: atomic Lua transitions, applied by group commit.

Callers hand in a batch of transitions with a callback and return at once. On the next
loop iteration, everything pending is written to Redis as one pipeline (one EVALSHA per
transition kind and chunk) on the log's own connection; callbacks run in commit order.
Up to MAX_IN_FLIGHT commits may await their replies while the next batch gathers; a lone
transition commits on the next loop iteration, without any fixed delay. Redis runs one
connection's commands in order, so the log's order is the order transitions were handed
in. Commits name their scripts by SHA1 (EVALSHA); the connection loads them and, should
Redis lose them under it, re-sends in order what was refused (``resp``'s docstring).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import redis.asyncio as aioredis

from aqnode import errors
from aqnode.util.loops import LoopRef
from aqnode.wal import entry_body, resp
from aqnode.wal.keys import LogKeys
from aqnode.wal.redis_errors import SCRIPT_MISSING, UNREACHABLE, translate, translated

log = logging.getLogger("aqnode.wal")


class LogState(enum.StrEnum):
    """An entry's ``state`` field in Redis, as the Lua scripts write and report it."""

    ENQUEUED = "enqueued"
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    MOVED = "moved"  # cluster mode: adopted by another node, now in its new owner's log
    #: cluster mode, a script's word: this node's group declared it dead and adopted its
    #: log, so the log takes no new message and starts none
    FENCED = "fenced"
    MISSING = "missing"  # a script's word for an entry that is not in the log


@dataclass(frozen=True, slots=True)
class Applied:
    """The script made the move it was asked for."""

    seq: int = 0  #: enqueue: the new entry's sequence number
    #: interrupt: where the entry went, ENQUEUED (to run again) or INTERRUPTED
    to: str = ""


APPLIED = Applied()  #: the one outcome of an applied move that carries nothing (hot path)


@dataclass(frozen=True, slots=True)
class Refused:
    """The entry was not in the state the move needs, and was left as it was."""

    state: str  #: its current state (a LogState value; MISSING if it is not in the log)


@dataclass(frozen=True, slots=True)
class Failed:
    """Not known to have applied (Redis did not answer, or refused the script): the
    transition may be tried again, never assumed either way."""

    error: errors.AqError


Outcome = Applied | Refused | Failed
#: gets one outcome per item handed in, in the same order
Callback = Callable[[list[Outcome]], None]

#: The order kinds are applied in within one commit: an outcome lands before the next
#: dispatch of the same entity that travelled in the same frame.
KINDS: Final = ("finish", "retry", "interrupt", "undispatch", "dispatch", "enqueue")
SCRIPTS: Final = (*KINDS, "cleanup", "dlq_take", "hand_over", "tombstone")
MAX_SCRIPT_BATCH: Final = 500  #: transitions per EVALSHA; bounds one script's run time
MAX_IN_FLIGHT: Final = 2  #: commits sent and not yet answered (double buffering)


@dataclass(slots=True)
class EnqueueEntry:
    message_id: str
    entity_type: str
    message: str
    entity_id: str
    payload: bytes
    enqueued_at: float
    dispatch: bool = False  # the entity is idle: write it `dispatched` right away
    #: cluster mode: a moved message coming back here (adoption): it may replace the
    #: `moved` tombstone of its earlier stay in this log
    revive: bool = False


@dataclass(slots=True)
class FinishEntry:
    message_id: str
    state: LogState  # COMPLETED or FAILED
    reply: bytes
    error: bytes
    dead: bool = False  # failed with no attempts left: dead-letter it ("exhausted")


@dataclass(slots=True)
class InterruptEntry:
    message_id: str
    retry: bool  # on_interrupt = "retry" with attempts left: back to `enqueued`
    error: bytes


@dataclass(slots=True)
class TombstoneEntry:
    message_id: str
    entity_type: str
    message: str
    entity_id: str
    error: bytes  #: msgpack of the INTERRUPTED error, what a resend is answered with


@dataclass(slots=True)
class RetryEntry:
    message_id: str
    error: bytes


@dataclass(slots=True)
class _Request:
    kind: str
    items: Sequence[Any]
    done: Callback


#: a request in a commit: the request, its chunk's first EVALSHA, its first item in the chunk
_Span = tuple[_Request, int, int]


class WriteAheadLog:
    """Durable message states in Redis; every method is non-blocking and group-committed."""

    def __init__(
        self, client: aioredis.Redis, keys: LogKeys, *, entry_ttl_s: int, clock: Callable[[], float]
    ) -> None:
        self.redis = client
        self.keys = keys
        self._ttl = entry_ttl_s
        self._clock = clock
        self._sources = {name: load_lua(name) for name in SCRIPTS}
        # The commit scripts as the log's connection loads them: without their comment
        # headers, and ending in a token of this log's own, so that no other connection
        # ever loads the same script (what makes a NOSCRIPT re-send safe, see resp).
        token = f"\n-- aqnode log {keys.node_id} {secrets.token_hex(8)}"
        bodies = {kind: _strip_comments(self._sources[kind]) + token for kind in KINDS}
        self._commit_shas = {kind: resp.script_sha(body) for kind, body in bodies.items()}
        self._shas: dict[str, str] = {}
        self._raw = resp.PipelinedConnection(client, keys.base, scripts=list(bodies.values()))
        self._pending: list[_Request] = []
        self._loop = LoopRef()
        self._scheduled = False  #: a _pump is due on the loop
        self._in_flight = 0  #: commits written and not yet answered (or failed)
        #: opens the connection when none is open; no commit is written meanwhile
        self._task: asyncio.Task[None] | None = None
        #: flush()es waiting: how many requests must be answered first, and the future
        self._drained: list[tuple[int, asyncio.Future[None]]] = []
        self._handed = 0  #: requests handed in
        #: requests answered. Commits take the pending requests in the order they were
        #: handed in and are answered in order, so after each commit these are the first
        #: ones handed in (within a commit, kinds go in KINDS order)
        self._settled = 0
        self.commits = 0  #: pipelines sent, for metrics and benchmarks
        self.committed = 0  #: transitions applied
        #: called with (kind, transitions) for every kind in every commit (metrics)
        self.on_commit: Callable[[str, int], None] | None = None

    async def start(self) -> None:
        with translated("Redis (loading the log's scripts)"):
            await self._load_scripts()

    async def _load_scripts(self) -> None:
        for kind, source in self._sources.items():
            self._shas[kind] = await self.redis.script_load(source)

    # ---- the transitions -------------------------------------------------------------

    def enqueue(self, entries: Sequence[EnqueueEntry], done: Callback) -> None:
        self._add(_Request("enqueue", entries, done), alone_ok=True)

    def dispatch(self, message_ids: Sequence[str], done: Callback) -> None:
        self._add(_Request("dispatch", message_ids, done))

    def finish(self, entries: Sequence[FinishEntry], done: Callback) -> None:
        self._add(_Request("finish", entries, done), alone_ok=True)

    def retry(self, entries: Sequence[RetryEntry], done: Callback) -> None:
        self._add(_Request("retry", entries, done))

    def interrupt(self, entries: Sequence[InterruptEntry], done: Callback) -> None:
        self._add(_Request("interrupt", entries, done))

    def undispatch(self, message_ids: Sequence[str], done: Callback) -> None:
        self._add(_Request("undispatch", message_ids, done))

    async def read_entry(self, message_id: str) -> dict[str, Any]:
        """One entry's fields (text fields as str, ``payload``/``reply``/``error`` as bytes)."""
        with translated():
            raw = await self.redis.hgetall(self.keys.entry(message_id))
        return _decode_fields(raw, message_id)

    async def dead_letter_count(self) -> int:
        """How many dead letters wait in this node's queue."""
        with translated():
            count: int = await self.redis.zcard(self.keys.dlq)
        return count

    async def states(self, message_ids: Sequence[str]) -> list[str | None]:
        """The current state of each message (None: not in the log)."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for mid in message_ids:
                pipe.hget(self.keys.entry(mid), "state")
            raw = await pipe.execute()
        return [None if v is None else _text(v) for v in raw]

    async def register_node(self) -> None:
        """Record this node id, so that tools can find every node's log and dead letters."""
        with translated():
            await self.redis.sadd(self.keys.nodes, self.keys.node_id)

    async def live_entries(self, chunk: int = 1000) -> list[dict[str, Any]]:
        """Every non-terminal entry, in log (sequence) order; dangling index ids dropped."""
        with translated("Redis (reading the log)"):
            return await self._live_entries(chunk)

    async def _live_entries(self, chunk: int) -> list[dict[str, Any]]:
        ids = [_text(i) for i in await self.redis.zrange(self.keys.live, 0, -1)]
        entries: list[dict[str, Any]] = []
        dangling: list[str] = []
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for mid in part:
                pipe.hgetall(self.keys.entry(mid))
            for mid, raw in zip(part, await pipe.execute(), strict=True):
                if raw:
                    entries.append(_decode_fields(raw, mid))
                else:  # the entry's safety TTL ran out: nothing left to run
                    dangling.append(mid)
        if dangling:
            await self.redis.zrem(self.keys.live, *dangling)
        return entries

    async def cleanup(self, older_than: float, limit: int = 1000) -> int:
        """Evict terminal entries finished before ``older_than``; how many were deleted."""
        with translated("Redis (log cleanup)"):
            done = await self.redis.zrangebyscore(self.keys.done, "-inf", older_than, 0, limit)
            ids = [_text(i) for i in done]
            if not ids:
                return 0
            keys = [self.keys.done, *(self.keys.entry(i) for i in ids)]
            deleted: int = await self._run_script("cleanup", keys, ids)
        return deleted

    async def dlq_take(self, message_ids: Sequence[str], mode: str) -> list[int]:
        """Take entries out of the dead-letter queue: ``mode`` is "replay" or "purge"."""
        keys = [self.keys.dlq, self.keys.done, *(self.keys.entry(i) for i in message_ids)]
        args = [repr(self._clock()), mode, self._ttl, *message_ids]
        taken: list[int] = await self._run_script("dlq_take", keys, args)
        return taken

    async def fence(self, adopter: str) -> None:
        """Cluster mode: this log's node was declared dead; from now on its log takes no
        new message and starts none (enqueue.lua and dispatch.lua check it)."""
        with translated("Redis (fencing a dead node's log)"):
            await self.redis.set(self.keys.fence, adopter)

    async def unfence(self) -> None:
        """A new process of this node joined its group afresh: its log serves again."""
        with translated("Redis (lifting this node's fence)"):
            await self.redis.delete(self.keys.fence)

    async def hand_over(self, message_ids: Sequence[str], adopter: str) -> list[Outcome]:
        """Adoption (cluster mode): these `enqueued` messages are in their new owners'
        logs now; they leave this one as `moved`."""
        keys = [self.keys.live, self.keys.done, *(self.keys.entry(i) for i in message_ids)]
        with translated("Redis (handing messages over)"):
            reply = await self._run_script(
                "hand_over", keys, [repr(self._clock()), adopter, *message_ids]
            )
        return [outcome_of("hand_over", reply, i) for i in range(len(message_ids))]

    async def tombstone(self, entries: Sequence[TombstoneEntry], interrupted_on: str) -> None:
        """Adoption (cluster mode): these messages were interrupted by the death of node
        ``interrupted_on``; this log (their entities' new owner's) records them as
        `interrupted`, so a resend under the same id runs nothing. Ids it knows stay."""
        if not entries:
            return
        keys = [self.keys.done, *(self.keys.entry(e.message_id) for e in entries)]
        args: list[Any] = [self._ttl, repr(self._clock())]
        for e in entries:
            args += [e.message_id, e.entity_type, e.message, e.entity_id, e.error, interrupted_on]
        with translated("Redis (recording interrupted messages at their new owner)"):
            await self._run_script("tombstone", keys, args)

    async def _run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self._shas:
            await self._load_scripts()
        try:
            return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)
        except SCRIPT_MISSING:
            await self._load_scripts()
            return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)

    async def flush(self) -> None:
        """Wait until everything handed in so far is committed (or failed). What is
        handed in meanwhile is not waited for: requests are answered in the order they
        were handed in, so this ends even while others keep coming (a draining node's
        shards keep finishing messages)."""
        target = self._handed
        if self._settled < target:
            waiter: asyncio.Future[None] = self._loop.get().create_future()
            self._drained.append((target, waiter))
            await waiter

    def abandon_in_flight(self, reason: str) -> None:
        """Redis is given up for now: fail the commits waiting for replies at once."""
        self._raw.abandon(reason)

    async def close(self) -> None:
        await self.flush()
        await self._raw.close()

    # ---- group commit ----------------------------------------------------------------
    #
    # No task per commit: a request schedules one _pump on the loop (so everything handed
    # in during this loop iteration goes in one commit), the pump writes on the open
    # connection at once, and a commit's reply callback schedules the next pump. Only
    # opening a connection needs a task (_connect); no commit is written meanwhile, so
    # commits reach Redis in the order they were handed in.
    #
    # An enqueue or a finish that finds the log idle (nothing pending, nothing in flight)
    # is written at once, alone: a lone call then costs no loop turn. Only these two may
    # go ahead of what the same iteration hands in after them, because a commit applies
    # its kinds in KINDS order anyway: a finish first, so nothing handed in after it was
    # ever applied before it; an enqueue last, but it only creates entries, and one that
    # meets an entry of the same id (an idempotency key) is refused whatever transition
    # that entry is in, with the message still live in the ledger.

    def _add(self, request: _Request, alone_ok: bool = False) -> None:
        idle = not (self._pending or self._in_flight or self._scheduled or self._task)
        self._handed += 1
        self._pending.append(request)
        if alone_ok and idle:
            self._pump()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._task is None:
            self._scheduled = True
            self._loop.get().call_soon(self._pump)

    def _pump(self) -> None:
        """Write what is pending, with at most MAX_IN_FLIGHT commits unanswered (the rest
        gathers until a reply comes); with no connection open, start _connect."""
        self._scheduled = False
        while self._pending and self._in_flight < MAX_IN_FLIGHT and self._task is None:
            batch, self._pending = self._pending, []
            try:
                calls, spans = self._prepare(batch)
            except Exception as exc:  # a bug of ours: these requests fail, the log goes on
                log.exception("a commit could not be encoded")
                self._failed([(r, 0, 0) for r in batch], exc)
                continue
            if not self._write(calls, spans):
                self._task = self._loop.get().create_task(self._connect(calls, spans))
                return
        self._check_drained()

    def _write(self, calls: list[list[Any]], spans: list[_Span]) -> bool:
        """Write one commit on the open connection: True once it is written or has failed
        (its requests were told); False, nothing written, when no connection is open."""
        self._in_flight += 1  # before the write: a closing socket answers at once
        try:
            written = self._raw.post_open(calls, self._on_replies(spans))
        except Exception as exc:  # a value RESP cannot carry (a bug of ours): not written
            self._in_flight -= 1
            log.exception("a commit could not be encoded")
            self._failed(spans, exc)
            return True
        if not written:
            self._in_flight -= 1
        return written

    async def _connect(self, calls: list[list[Any]], spans: list[_Span]) -> None:
        """Open the connection and write the commit that found none; if it cannot be
        opened, that commit fails (nothing was written) and the next pump tries again."""
        try:
            await self._raw.connect()
        except BaseException as exc:  # (cancelled too: every request gets its outcome)
            self._failed(spans, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not self._write(calls, spans):  # lost again at once: nothing was written
                self._failed(spans, ConnectionError("the connection to Redis closed"))
        finally:
            self._task = None
        if self._pending:
            self._schedule()
        self._check_drained()

    def _answered(self) -> None:
        self._in_flight -= 1
        if self._pending:
            self._schedule()
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._drained:
            return
        settled = self._settled
        waiting = []
        for target, waiter in self._drained:
            if target > settled:
                waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._drained = waiting

    def _prepare(self, batch: list[_Request]) -> tuple[list[list[Any]], list[_Span]]:
        """One commit's EVALs, in KINDS order, and where each request's outcomes are."""
        now = repr(self._clock())
        calls: list[list[Any]] = []  # EVALSHA arguments
        spans: list[_Span] = []  # request, first call, first item
        kinds = {r.kind for r in batch}
        for kind in KINDS if len(kinds) > 1 else kinds:
            requests = [r for r in batch if r.kind == kind] if len(kinds) > 1 else batch
            if not requests:
                continue
            items: list[Any] = []
            first_call = len(calls)
            for request in requests:
                spans.append((request, first_call, len(items)))
                items.extend(request.items)
            if self.on_commit is not None:
                self.on_commit(kind, len(items))
            for start in range(0, len(items), MAX_SCRIPT_BATCH):
                chunk = items[start : start + MAX_SCRIPT_BATCH]
                calls.append(
                    ["EVALSHA", self._commit_shas[kind], *self._script_args(kind, chunk, now)]
                )
        return calls, spans

    def _on_replies(self, spans: list[_Span]) -> resp.OnReplies:
        def delivered(replies: resp.Replies) -> None:
            # Called from the socket's data_received, in send order: callbacks run in
            # commit order, with no task switch between Redis's reply and the callers.
            try:
                if isinstance(replies, BaseException):
                    self._failed(spans, replies)
                else:
                    self.commits += 1
                    for request, first_call, first_item in spans:
                        self._deliver(request, replies, first_call, first_item)
            finally:
                self._answered()

        return delivered

    def _failed(self, spans: list[_Span], exc: BaseException) -> None:
        # Anything but Redis away (a bug of ours, a garbled reply) is the log's own failure.
        error = (
            translate(exc, then="the commit's outcome is unknown")
            if isinstance(exc, UNREACHABLE)
            else errors.AqError(
                f"the write-ahead log's connection failed ({type(exc).__name__}: {exc}); "
                "the commit's outcome is unknown"
            )
        )
        for request, _, _ in spans:
            _call(request.done, [Failed(error)] * len(request.items))
            self._settled += 1

    def _deliver(
        self,
        request: _Request,
        replies: list[Any],
        first_call: int,
        first_item: int,
    ) -> None:
        """Hand a request one outcome per item, read from the reply of its item's chunk."""
        chunk = MAX_SCRIPT_BATCH
        outcomes = [
            outcome_of(request.kind, replies[first_call + i // chunk], i % chunk)
            for i in range(first_item, first_item + len(request.items))
        ]
        self.committed += sum(not isinstance(o, Failed) for o in outcomes)
        _call(request.done, outcomes)
        self._settled += 1

    def _script_args(self, kind: str, items: Sequence[Any], now: str) -> list[Any]:
        keys = self.keys
        prefix = keys.entry_prefix
        entries = [prefix + _id_of(item) for item in items]
        args: list[Any]
        if kind == "dispatch":
            return [len(entries) + 1, keys.fence, *entries, now]
        if kind == "undispatch":
            return [len(entries), *entries]
        if kind == "retry":
            return [len(entries), *entries, *(e.error for e in items)]
        if kind == "finish":
            args = [len(entries) + 3, keys.live, keys.done, keys.dlq, *entries, now]
            for e in items:
                args.extend((e.message_id, e.state, e.reply, e.error, "1" if e.dead else "0"))
            return args
        if kind == "interrupt":
            args = [len(entries) + 2, keys.live, keys.dlq, *entries, now]
            for e in items:
                args.extend((e.message_id, "1" if e.retry else "0", e.error))
            return args
        args = [len(entries) + 3, keys.fence, keys.seq, keys.live, *entries, self._ttl, now]
        pack = entry_body.pack
        for e in items:
            args.extend(
                (
                    e.message_id,
                    pack(e.entity_type, e.message, e.entity_id, e.enqueued_at),
                    e.payload,
                    _ENQUEUE_FLAGS[e.dispatch, e.revive],
                )
            )
        return args


_ENQUEUE_FLAGS = {
    (False, False): b"0",
    (True, False): b"1",
    (False, True): b"2",
    (True, True): b"3",
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_of(item: Any) -> str:
    return item if isinstance(item, str) else str(item.message_id)


#: interrupt.lua answers with the state it left the entry in, moved or not: these two
#: are where an interrupt sends it (one already there was moved by an earlier commit of
#: the same interrupt whose reply was lost), anything else means it was not `dispatched`.
INTERRUPT_TARGETS: Final = frozenset({LogState.ENQUEUED, LogState.INTERRUPTED})


def outcome_of(kind: str, reply: list[Any] | Exception, index: int) -> Outcome:
    """The outcome of item ``index`` of one EVALSHA of script ``kind``, from its ``reply``: a
    script that failed fails every item of its chunk; else 1 (or enqueue's sequence
    number) means applied and a state means refused (each script's header in ``lua/``)."""
    if isinstance(reply, Exception):  # a script's error reply (MISCONF, OOM, READONLY, ...):
        # nothing of it is known to have applied, so it is tried again like an outage
        return Failed(translate(reply, refused="the write-ahead log's transition"))
    value = reply[index]
    if isinstance(value, int):
        return Applied(seq=value) if kind == "enqueue" else APPLIED
    state = _text(value)
    if kind == "interrupt" and state in INTERRUPT_TARGETS:
        return Applied(to=state)
    return Refused(state)


def _call(done: Callback, outcomes: list[Outcome]) -> None:
    try:
        done(outcomes)
    except Exception:  # a callback bug must not stall the log for everyone else
        log.exception("write-ahead log callback failed")


BINARY_FIELDS: Final = frozenset({"payload", "reply", "error", entry_body.BODY})


def _decode_fields(raw: dict[Any, Any], message_id: str) -> dict[str, Any]:
    """Entry ``message_id``'s hash with text fields as ``str`` and payload/reply/error kept
    as bytes, its packed ``body`` (if it has one) spelled out (``entry_body.expand``)."""
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        keep = name in BINARY_FIELDS or not isinstance(value, bytes)
        fields[name] = value if keep else value.decode()
    return entry_body.expand(fields, message_id)


def _strip_comments(source: str) -> str:
    """The script minus whole-line comments and indentation: less for Redis to load."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


def load_lua(kind: str) -> str:
    return resources.files("aqnode.wal").joinpath("lua", f"{kind}.lua").read_text()
