"""Handlers that misbehave: odd exceptions, self-cancellation, wrong or huge replies, a
blocked loop, ``os._exit`` (SPEC 3, 5, 6, 8; the handlers are tests/handlers/hostile.py).

Each test runs its own real 2-shard node (``max_attempts = 1``) and talks to it over a raw
``Session`` stream, so that it can count the outcomes of every call: each call must get
exactly one, within a deadline. For every misbehaviour it checks that

- the waiter gets one outcome: a reply, ``HANDLER_ERROR``, or ``INTERRUPTED`` where the
  shard dies (``os._exit``, a blocked loop);
- the message ran at most once (every run is fsynced to a file before the misbehaviour);
- a follow-up message for the same entity runs normally, once;
- messages for other entities complete: on the other shard, and where the shard dies,
  also on the same shard when they had not started yet;
- no shard restarts unless the handler killed it, and the supervisor lives on;
- the log has nothing left ``enqueued`` or ``dispatched`` at the end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
import redis

from aqnode.client import Client
from aqnode.errors import AqError
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from aqnode.wal.dlq import DeadLetterQueue
from tests.handlers.hostile import RECORD_ENV, Act, Big, Shaped, SyncAct, runs
from tests.node_fixture import NODE_ID, Node, running_node
from tests.redis_fixture import async_wait_for, wait_for

ENTRY = f"aq:{{{NODE_ID}}}:m:"
LIVE = f"aq:{{{NODE_ID}}}:live"
MSGPACK = "application/msgpack"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
WAIT_MS = 10_000  #: the node-side reply timeout of every waiting call
DEADLINE_S = 30.0  #: a stream whose calls are not all answered by then hangs
MAX_REPLY_BYTES = 16 * 1024 * 1024  #: the SPEC's default max_reply_bytes
PROBES = 16  #: entities probed to find some on each shard


# ---- the node and what it recorded ---------------------------------------------------


@dataclass
class Hostile:
    node: Node
    record: Path
    redis: redis.Redis

    def runs_of(self) -> collections.Counter[str]:
        return collections.Counter(r["id"] for r in runs(self.record))

    def pids(self) -> dict[int, int]:
        """Shard index -> pid, once both shards are up."""

        def up() -> dict[int, int] | None:
            if self.node.proc.poll() is not None:
                raise AssertionError(
                    f"the supervisor exited with code {self.node.proc.returncode}:\n"
                    f"{self.node.log()[-3000:]}"
                )
            try:
                status = self.node.status()
            except AqError:
                return None
            if len(status.shards) == 2 and all(s.alive and s.pid for s in status.shards):
                return {s.index: s.pid for s in status.shards}
            return None

        found: dict[int, int] = wait_for(up, timeout=20, message="the shards are not all up")
        return found

    def unfinished(self) -> dict[str, str]:
        """Log entries still `enqueued` or `dispatched`: message id -> state."""
        left = {}
        for key in self.redis.scan_iter(match=f"{ENTRY}*", count=1000):
            state = self.redis.hget(key, "state")
            if state in (b"enqueued", b"dispatched"):
                left[key.decode()[len(ENTRY) :]] = state.decode()
        return left

    def assert_log_settled(self) -> None:
        wait_for(
            lambda: not self.unfinished() and self.redis.zcard(LIVE) == 0,
            timeout=10,
            message=f"the log still holds unfinished entries: {self.unfinished()}",
        )

    def dead_letters(self) -> dict[str, Any]:
        return {d.message_id: d for d in DeadLetterQueue(self.redis, "aq").entries()}


@contextlib.contextmanager
def hostile_node(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, **overrides: Any
) -> Iterator[Hostile]:
    record = tmp_path / "runs.jsonl"
    settings: dict[str, Any] = {
        "handlers": ["tests.handlers.hostile"],
        "retry": {"max_attempts": 1},
        **overrides,
    }
    with running_node(tmp_path / "node", redis_url, env={RECORD_ENV: str(record)}, **settings) as n:
        yield Hostile(n, record, redis_client)


# ---- a raw Session stream that counts outcomes ---------------------------------------


def envelope(msg: Act | Big | Shaped | SyncAct, message_id: str) -> pb.Envelope:
    return pb.Envelope(
        entity_type="hostile",
        message=type(msg).__name__,
        entity_id=msg.key,
        payload=msgspec.msgpack.encode(msg),
        content_type=MSGPACK,
        message_id=message_id,
    )


def describe(outcome: pb.Outcome) -> str:
    if outcome.ok:
        return f"ok, a reply of {len(outcome.reply)} bytes: {outcome.reply[:60]!r}"
    f = outcome.failure
    return f"{f.code}: {f.message[:300]} (remote_type {f.remote_type!r})"


def reply_of(outcome: pb.Outcome) -> Any:
    assert outcome.ok, describe(outcome)
    return msgspec.msgpack.decode(outcome.reply) if outcome.reply else None


@dataclass
class RawSession:
    """One ``Session`` stream; every outcome is kept, per call id, in arrival order."""

    address: str
    outcomes: dict[int, list[pb.Outcome]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # message id -> call id
    error: BaseException | None = None
    _next: int = 1

    async def __aenter__(self) -> RawSession:
        self._channel = grpc.aio.insecure_channel(self.address, options=GRPC_OPTIONS)
        self._stream = pb_grpc.AqNodeStub(self._channel).Session()
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        self._stream.cancel()
        await self._channel.close()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._stream.read()
                if frame is grpc.aio.EOF:
                    return
                for outcome in frame.outcomes:
                    self.outcomes.setdefault(outcome.call_id, []).append(outcome)
                self._arrived.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self._arrived.set()

    async def send(self, *calls: tuple[pb.Envelope, bool]) -> list[int]:
        """One frame with these calls (envelope, wait), in order; returns their call ids."""
        frame = []
        for env, wait in calls:
            call_id, self._next = self._next, self._next + 1
            self.ids[env.message_id] = call_id
            frame.append(pb.Call(call_id=call_id, envelope=env, wait=wait, timeout_ms=WAIT_MS))
        await self._stream.write(pb.ClientFrame(calls=frame))
        return [c.call_id for c in frame]

    async def outcome(self, call_id: int, timeout: float = DEADLINE_S) -> pb.Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.outcomes.get(call_id):
            if self._reader.done():
                raise AssertionError(f"the stream ended ({self.error}) without call {call_id}")
            if loop.time() >= deadline:
                raise AssertionError(f"call {call_id} got no outcome in {timeout}s: it hangs")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
        return self.outcomes[call_id][0]

    async def finish(self, timeout: float = DEADLINE_S) -> None:
        """Half-close and read to the end: the node ends the stream once every call is
        answered, so whatever it sent for any call is in ``outcomes`` afterwards."""
        await self._stream.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            unanswered = sorted(set(range(1, self._next)) - set(self.outcomes))
            raise AssertionError(
                f"the stream did not end within {timeout}s; calls without an outcome: "
                f"{[m for m, c in self.ids.items() if c in unanswered]}"
            ) from None

    def only(self, message_id: str) -> pb.Outcome:
        """The one outcome of the call that sent ``message_id`` (exactly one, or fail)."""
        got = self.outcomes.get(self.ids[message_id], [])
        assert len(got) == 1, (
            f"{message_id}: the waiter got {len(got)} outcomes, not exactly one: "
            f"{[describe(o) for o in got]} (stream error: {self.error})"
        )
        return got[0]


@dataclass
class Layout:
    key: str  # the entity that misbehaves
    same: str  # another entity on its shard
    other: str  # an entity on the other shard
    pid: int  # the shard the misbehaving entity is on (before anything happened)
    other_pid: int


async def probe(session: RawSession, case: str) -> Layout:
    """Ask PROBES entities for their shard's pid; pick one per role."""
    keys = [f"{case}-e{i}" for i in range(PROBES)]
    ids = await session.send(*((envelope(Act(key=k), f"{k}-probe"), True) for k in keys))
    pids = [reply_of(await session.outcome(i)) for i in ids]
    key, pid = keys[0], pids[0]
    same = [k for k, p in zip(keys[1:], pids[1:], strict=True) if p == pid]
    other = [(k, p) for k, p in zip(keys, pids, strict=True) if p != pid]
    assert same and other, f"{PROBES} entities did not spread over both shards: {pids}"
    return Layout(key, same[0], other[0][0], pid, other[0][1])


def keyed(msg: Act | Big | Shaped | SyncAct, key: str) -> Act | Big | Shaped | SyncAct:
    return msgspec.structs.replace(msg, key=key)


# ---- misbehaviours the shard survives ------------------------------------------------

SURVIVED = [
    # (case, the misbehaving message, outcomes accepted, remote_type must contain)
    ("str-raises", Act(key="", how="str_raises"), {"HANDLER_ERROR"}, "StrRaises"),
    (
        "repr-and-str-raise",
        Act(key="", how="repr_and_str_raise"),
        {"HANDLER_ERROR"},
        "ReprAndStrRaise",
    ),
    ("base-exception", Act(key="", how="base_exception"), {"HANDLER_ERROR"}, "NotAnException"),
    ("system-exit", Act(key="", how="system_exit", code=1), {"HANDLER_ERROR"}, "SystemExit"),
    # 3 and 4 are exit codes a shard uses for "cannot start"; a handler may use them too
    ("system-exit-4", Act(key="", how="system_exit", code=4), {"HANDLER_ERROR"}, "SystemExit"),
    (
        "keyboard-interrupt",
        Act(key="", how="keyboard_interrupt"),
        {"HANDLER_ERROR"},
        "KeyboardInterrupt",
    ),
    ("generator-exit", Act(key="", how="generator_exit"), {"HANDLER_ERROR"}, "GeneratorExit"),
    ("cancel-self", Act(key="", how="cancel_self"), {"HANDLER_ERROR"}, ""),
    # a raw caller has no reply type: the node may fail it, or pass the reply through
    ("wrong-type", Act(key="", how="wrong_type"), {"HANDLER_ERROR", "ok"}, ""),
    ("unencodable", Act(key="", how="unencodable"), {"HANDLER_ERROR"}, ""),
    ("huge-error", Act(key="", how="huge_error", size=1_000_000), {"HANDLER_ERROR"}, "ValueError"),
    ("sync-system-exit", SyncAct(key="", how="system_exit"), {"HANDLER_ERROR"}, "SystemExit"),
    (
        "sync-keyboard-interrupt",
        SyncAct(key="", how="keyboard_interrupt"),
        {"HANDLER_ERROR"},
        "KeyboardInterrupt",
    ),
    ("huge-reply", Big(key="", size=20 * 1024 * 1024), {"HANDLER_ERROR"}, ""),
    # Text that is not UTF-8 in what the handler raised: its outcome must still travel
    ("surrogate-error", Act(key="", how="surrogate_error"), {"HANDLER_ERROR"}, "ValueError"),
    # A ctx.bus call whose frame cannot be encoded fails in the handler, not the shard
    (
        "bus-huge-timeout",
        Act(key="", how="bus_huge_timeout"),
        {"HANDLER_ERROR"},
        "ValidationFailed",
    ),
    ("bus-surrogate-id", Act(key="", how="bus_surrogate_id"), {"HANDLER_ERROR"}, "Validation"),
    # A forked child of the shard ends before it runs anything: no second shard
    ("fork", Act(key="", how="fork"), {"ok"}, ""),
    # ... and multiprocessing in a handler starts fresh interpreters instead
    ("mp-pool", SyncAct(key="", how="mp_pool"), {"ok"}, ""),
    # A Struct reply of the right class but the wrong shape is not an R
    ("struct-bad-field", Shaped(key="", how="bad_field"), {"HANDLER_ERROR"}, "ReplyTypeError"),
    ("struct-subclass", Shaped(key="", how="subclass"), {"HANDLER_ERROR"}, "ReplyTypeError"),
]


@pytest.mark.parametrize(
    ("case", "bad", "accepted", "remote_type"), SURVIVED, ids=[c[0] for c in SURVIVED]
)
def test_a_misbehaving_handler_fails_only_its_own_message(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    case: str,
    bad: Act | Big | Shaped | SyncAct,
    accepted: set[str],
    remote_type: str,
) -> None:
    with hostile_node(tmp_path, redis_url, redis_client) as h:
        before = h.pids()

        async def main() -> tuple[RawSession, Layout]:
            async with RawSession(h.node.address) as s:
                layout = await probe(s, case)
                # Given the misbehaving message, then one behind it on the same entity, and
                # one for another entity on the same shard and on the other shard
                await s.send(
                    (envelope(keyed(bad, layout.key), f"{case}-bad"), True),
                    (envelope(Act(key=layout.key), f"{case}-follow"), True),
                    (envelope(Act(key=layout.same), f"{case}-same"), True),
                    (envelope(Act(key=layout.other), f"{case}-other"), True),
                )
                await s.finish()
                return s, layout

        s, layout = asyncio.run(main())
        # Then the waiter got exactly one outcome, of an accepted kind
        outcome = s.only(f"{case}-bad")
        got = "ok" if outcome.ok else outcome.failure.code
        assert got in accepted, f"{case}: expected {accepted}, got {describe(outcome)}"
        if not outcome.ok:
            assert remote_type in outcome.failure.remote_type, describe(outcome)
        if case == "huge-reply":
            assert "max_reply_bytes" in outcome.failure.message, (
                f"the error should name the limit a person can change: {describe(outcome)}"
            )
            stored = h.redis.hstrlen(f"{ENTRY}{case}-bad", "reply")
            assert stored <= MAX_REPLY_BYTES, f"the log kept a {stored}-byte reply"
        # And everything behind it and beside it ran normally, on the shards it had
        assert reply_of(s.only(f"{case}-follow")) == layout.pid
        assert reply_of(s.only(f"{case}-same")) == layout.pid
        assert reply_of(s.only(f"{case}-other")) == layout.other_pid
        # And each message ran once: the misbehaving one too (it is never re-run)
        ran = h.runs_of()
        for suffix in ("bad", "follow", "same", "other"):
            assert ran[f"{case}-{suffix}"] == 1, f"{case}-{suffix} ran {ran[f'{case}-{suffix}']}x"
        # And no shard was restarted, the supervisor lives, and the log is settled
        assert h.node.proc.poll() is None, f"the supervisor exited:\n{h.node.log()[-3000:]}"
        assert h.pids() == before, "a handler's misbehaviour restarted a shard"
        h.assert_log_settled()
        if not outcome.ok:
            assert set(h.dead_letters()) == {f"{case}-bad"}


def test_a_reply_of_the_wrong_type_reaches_a_typed_caller_as_handler_error(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with hostile_node(tmp_path, redis_url, redis_client) as h:
        before = h.pids()

        async def main() -> tuple[BaseException | None, Any]:
            async with Client(h.node.address) as bus:
                try:
                    await bus.enqueue_and_wait(
                        Act(key="wt", how="wrong_type"), message_id="wt-bad", timeout=10
                    )
                except Exception as exc:
                    error: BaseException | None = exc
                else:
                    error = None
                follow = await bus.enqueue_and_wait(Act(key="wt"), message_id="wt-follow")
                return error, follow

        error, follow = asyncio.run(main())
        assert isinstance(error, AqError), (
            f"a wrong reply type must come back as an AqError, not "
            f"{type(error).__module__}.{type(error).__qualname__}: {error}"
        )
        assert error.code == "HANDLER_ERROR", error
        assert "int" in error.message, f"the error should name the declared type: {error}"
        assert follow in before.values()
        assert h.runs_of()["wt-bad"] == 1
        assert h.pids() == before
        h.assert_log_settled()


def test_a_reply_under_max_reply_bytes_comes_back_whole(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with hostile_node(tmp_path, redis_url, redis_client) as h, h.node.client() as bus:
        reply = bus.enqueue_and_wait(Big(key="big", size=2 * 1024 * 1024), timeout=10)
        assert reply == "x" * (2 * 1024 * 1024)


def test_a_huge_exception_message_keeps_its_code_on_a_unary_call(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """The error of a unary call travels in trailing metadata, which gRPC limits to a few
    KiB: a handler's 1 MB exception message must still come back as HANDLER_ERROR."""
    with hostile_node(tmp_path, redis_url, redis_client) as h:
        before = h.pids()
        bad = Act(key="he", how="huge_error", size=1_000_000)
        with grpc.insecure_channel(h.node.address, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.AqNodeStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.EnqueueAndWait(
                    pb.EnqueueAndWaitRequest(envelope=envelope(bad, "he-bad"), timeout_ms=WAIT_MS),
                    timeout=DEADLINE_S,
                )
            error = caught.value
            metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert metadata.get("aq-code") == "HANDLER_ERROR", (
                f"{error.code()}: {str(error.details())[:300]}"  # type: ignore[attr-defined]
            )
            assert error.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
            follow = stub.EnqueueAndWait(
                pb.EnqueueAndWaitRequest(envelope=envelope(Act(key="he"), "he-follow")),
                timeout=DEADLINE_S,
            )
            assert msgspec.msgpack.decode(follow.reply) in before.values()
        assert h.runs_of()["he-bad"] == 1
        assert h.pids() == before
        h.assert_log_settled()


# ---- misbehaviours that kill the shard -----------------------------------------------

DYING = [
    # (case, the message, node overrides)
    # os._exit after blocking the loop for a while: messages sent meanwhile reach the
    # shard but cannot start. 3 and 4 are the codes a shard uses for "cannot start".
    ("exit-1", Act(key="", how="exit", code=1, seconds=1.5), {}),
    ("exit-0", Act(key="", how="exit", code=0, seconds=1.5), {}),
    ("exit-3", Act(key="", how="exit", code=3, seconds=1.5), {}),
    ("exit-4", Act(key="", how="exit", code=4, seconds=1.5), {}),
    # a loop blocked for good: the stall watchdog kills the shard
    ("blocked", Act(key="", how="block", seconds=60), {"shard_stall_timeout_ms": 1000}),
]


@pytest.mark.parametrize(("case", "bad", "overrides"), DYING, ids=[c[0] for c in DYING])
def test_a_handler_that_kills_its_shard_costs_only_its_own_message(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    case: str,
    bad: Act,
    overrides: dict[str, Any],
) -> None:
    with hostile_node(tmp_path, redis_url, redis_client, **overrides) as h:
        before = h.pids()
        bad_id = f"{case}-bad"

        async def main() -> tuple[RawSession, Layout]:
            async with RawSession(h.node.address) as s:
                layout = await probe(s, case)
                # Given the handler that will kill its shard has started
                await s.send((envelope(keyed(bad, layout.key), bad_id), True))
                await async_wait_for(
                    lambda: h.runs_of()[bad_id] >= 1, timeout=10, message=f"{bad_id} never ran"
                )
                # When messages arrive meanwhile: behind it on the same entity, for another
                # entity of its shard (neither can start: the loop is blocked), and for an
                # entity of the other shard
                await s.send(
                    (envelope(Act(key=layout.key), f"{case}-follow"), True),
                    (envelope(Act(key=layout.same), f"{case}-same"), True),
                    (envelope(Act(key=layout.other), f"{case}-other"), True),
                )
                await s.finish()
                return s, layout

        s, layout = asyncio.run(main())
        # Then its waiter is told it was interrupted
        outcome = s.only(bad_id)
        assert not outcome.ok and outcome.failure.code == "INTERRUPTED", describe(outcome)
        # And what had not started ran all the same, the rest on the other shard
        for suffix in ("follow", "same"):
            got = s.only(f"{case}-{suffix}")
            assert got.ok, f"{case}-{suffix} had not started, yet: {describe(got)}"
        assert reply_of(s.only(f"{case}-other")) == layout.other_pid
        # And the supervisor lives on, the dead shard was restarted, the other one was not
        after = h.pids()
        (index,) = [i for i, pid in before.items() if pid == layout.pid]
        assert after[index] != before[index], "the dead shard was not restarted"
        assert {i: p for i, p in after.items() if i != index} == {
            i: p for i, p in before.items() if i != index
        }, "the other shard was restarted too"
        assert reply_of(s.only(f"{case}-follow")) == after[index]
        assert reply_of(s.only(f"{case}-same")) == after[index]
        # And only the interrupted message is dead-lettered
        letters = h.dead_letters()
        assert set(letters) == {bad_id}, f"dead letters: {sorted(letters)}"
        assert letters[bad_id].reason == "interrupted"
        # And every message ran at most once, the ones that completed exactly once
        ran = h.runs_of()
        for suffix in ("bad", "follow", "same", "other"):
            assert ran[f"{case}-{suffix}"] == 1, f"{case}-{suffix} ran {ran[f'{case}-{suffix}']}x"
        # And the entity takes new work, and the log is settled
        with h.node.client() as bus:
            assert bus.enqueue_and_wait(Act(key=layout.key), timeout=10) == after[index]
        h.assert_log_settled()
