"""Handlers that misbehave on purpose, for tests/integration/test_misbehaviour.py.

The message says how to misbehave (``Act.how``). Every run is recorded durably before the
handler does anything else: one JSON line per run (message id, how, shard pid), appended
with one ``write(2)`` to the file named by ``$AQ_HOSTILE_RECORD`` and fsynced, so a test
can count the runs of each message id afterwards even when the shard that ran it is dead.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from aqnode import Command, Context, entity_type, handles

RECORD_ENV = "AQ_HOSTILE_RECORD"

#: every value ``Act.how`` takes; anything else raises ValueError (a plain handler error)
HOWS = (
    "ok",  # returns the shard's pid: the control
    "str_raises",  # raises an exception whose __str__ raises
    "repr_and_str_raise",  # raises an exception whose __repr__ and __str__ both raise
    "base_exception",  # raises a BaseException subclass that is not an Exception
    "system_exit",  # raise SystemExit(code)
    "keyboard_interrupt",  # raise KeyboardInterrupt
    "generator_exit",  # raise GeneratorExit
    "cancel_self",  # asyncio.current_task().cancel(), then await
    "wrong_type",  # returns a dict where the message's reply type is int
    "unencodable",  # returns an object msgspec cannot encode
    "huge_error",  # raises ValueError whose message is `size` bytes long
    "block",  # blocks the shard's event loop with time.sleep(seconds), then returns the pid
    "exit",  # blocks the loop for `seconds`, then os._exit(code)
    "surrogate_error",  # raises ValueError whose text holds a lone surrogate (not UTF-8)
    "bus_huge_timeout",  # ctx.bus.enqueue_and_wait(..., timeout=1e30): refused, raised
    "bus_surrogate_id",  # ctx.bus.enqueue_raw to an entity id that is not UTF-8
    "fork",  # os.fork(): a child that went on would be a second copy of the shard
    "mp_pool",  # (SyncAct) a multiprocessing.Pool with the default start method
)


class StrRaises(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("StrRaises.__str__ refuses")


class ReprAndStrRaise(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("ReprAndStrRaise.__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("ReprAndStrRaise.__repr__ refuses")


class NotAnException(BaseException):
    """A BaseException subclass outside the Exception tree (like a framework's own)."""


class Unencodable:
    """Nothing msgspec knows how to encode."""


@entity_type("hostile", id_field="key")
class Act(Command[int]):
    """Misbehave as ``how`` says; ``ok`` (and a ``block`` that survives) return the pid."""

    key: str
    how: str = "ok"
    seconds: float = 0.0
    code: int = 1
    size: int = 0


class Point(msgspec.Struct, forbid_unknown_fields=True):
    x: int


class PointPlus(Point):
    extra: int = 0


@entity_type("hostile", id_field="key")
class Shaped(Command[Point]):
    """Returns a Point that is not one: ``bad_field`` (x is a str), ``subclass`` (a
    subclass with a field Point forbids), else a good one."""

    key: str
    how: str = "ok"


@entity_type("hostile", id_field="key")
class Big(Command[str]):
    """Returns a string of ``size`` bytes."""

    key: str
    size: int


@entity_type("hostile", id_field="key")
class SyncAct(Command[int]):
    """A plain ``def`` handler (it runs in a worker thread); ``how`` as for Act."""

    key: str
    how: str = "system_exit"
    code: int = 1


def record(message_id: str, how: str) -> None:
    """Append one line for this run and make it durable before anything else happens."""
    line = json.dumps({"id": message_id, "how": how, "pid": os.getpid()}) + "\n"
    fd = os.open(os.environ[RECORD_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write(2): atomic with O_APPEND
        os.fsync(fd)
    finally:
        os.close(fd)


def runs(path: str | Path) -> list[dict[str, Any]]:
    """Every run recorded in ``path``, in the order they started (for the tests)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _misbehave(how: str, code: int, size: int) -> None:
    """Raise what ``how`` asks for; return for the kinds that do not raise here."""
    if how == "str_raises":
        raise StrRaises()
    if how == "repr_and_str_raise":
        raise ReprAndStrRaise()
    if how == "base_exception":
        raise NotAnException("a BaseException that is not an Exception")
    if how == "system_exit":
        raise SystemExit(code)
    if how == "keyboard_interrupt":
        raise KeyboardInterrupt
    if how == "generator_exit":
        raise GeneratorExit
    if how == "huge_error":
        raise ValueError("E" * size)
    if how not in HOWS:
        raise ValueError(f"unknown misbehaviour {how!r}")


@handles(Act)
async def act(msg: Act, ctx: Context) -> Any:
    record(ctx.message_id, msg.how)
    if msg.how == "cancel_self":
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)  # the CancelledError lands here
        return -1  # not reached
    if msg.how == "wrong_type":
        return {"not": "an int"}
    if msg.how == "unencodable":
        return Unencodable()
    if msg.how == "block":
        time.sleep(msg.seconds)  # blocks the whole shard: a bug the node must survive
        return os.getpid()
    if msg.how == "exit":
        time.sleep(msg.seconds)  # nothing else starts on this shard meanwhile
        os._exit(msg.code)
    if msg.how == "fork":
        child = os.fork()
        if child == 0:  # only if the child lives on past the fork
            record(ctx.message_id, "fork-child")
            return os.getpid()
        _, status = os.waitpid(child, 0)
        record(f"{ctx.message_id}-child-exit", str(os.waitstatus_to_exitcode(status)))
        return os.getpid()
    if msg.how == "surrogate_error":
        raise ValueError("bad \ud800 text")
    if msg.how == "bus_huge_timeout":
        await ctx.bus.enqueue_and_wait(Act(key=f"{msg.key}-peer"), timeout=1e30)
    if msg.how == "bus_surrogate_id":
        await ctx.bus.enqueue_raw("hostile", "Act", "peer-\ud800", {"key": "peer"})
    _misbehave(msg.how, msg.code, msg.size)
    return os.getpid()


@handles(Shaped)
async def shaped(msg: Shaped, ctx: Context) -> Point:
    record(ctx.message_id, f"shaped_{msg.how}")
    if msg.how == "bad_field":
        return Point(x="not an int")  # type: ignore[arg-type]  # msgspec does not check here
    if msg.how == "subclass":
        return PointPlus(x=1, extra=2)
    return Point(x=os.getpid())


@handles(Big)
async def big(msg: Big, ctx: Context) -> str:
    record(ctx.message_id, "big")
    return "x" * msg.size


@handles(SyncAct)
def sync_act(msg: SyncAct, ctx: Context) -> int:
    record(ctx.message_id, f"sync_{msg.how}")
    if msg.how == "mp_pool":
        with multiprocessing.Pool(2) as pool:  # forked workers would end at once
            return sum(pool.map(abs, [-1, -2, -3]))
    _misbehave(msg.how, msg.code, 0)
    return os.getpid()
