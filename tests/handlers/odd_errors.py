"""Handlers that fail in ways a worker must survive: a bad __str__, SystemExit, a wrong reply."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec

from aqnode import Command, entity_type, handles

RUNS: list[str] = []  # message kinds in the order they ran (one shard process, one list)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


class Reply(msgspec.Struct):
    value: int


@entity_type("odd", id_field="key")
class BadStr(Command[None]):
    key: str


@entity_type("odd", id_field="key")
class Exit(Command[None]):
    key: str


@entity_type("odd", id_field="key")
class WrongReply(Command[Reply]):
    key: str


@entity_type("odd", id_field="key")
class Fine(Command[Reply]):
    key: str


@entity_type("odd", id_field="key")
class CancelAndReturn(Command[Reply]):
    """Asks for its task's cancellation and returns without awaiting: the request is
    still pending when the handler ends."""

    key: str


@entity_type("odd", id_field="key")
class CancelAndSwallow(Command[Reply]):
    key: str


@handles(CancelAndReturn)
async def cancel_and_return(msg: CancelAndReturn) -> Reply:
    RUNS.append("CancelAndReturn")
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    return Reply(2)


@handles(CancelAndSwallow)
async def cancel_and_swallow(msg: CancelAndSwallow) -> Reply:
    RUNS.append("CancelAndSwallow")
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # a handler may swallow it
        await asyncio.sleep(1)
    return Reply(3)


@handles(BadStr)
async def bad_str(msg: BadStr) -> None:
    RUNS.append("BadStr")
    raise Unprintable()


@handles(Exit)
async def leave(msg: Exit) -> None:
    RUNS.append("Exit")
    raise SystemExit(3)


@handles(WrongReply)
async def wrong_reply(msg: WrongReply) -> Reply:
    RUNS.append("WrongReply")
    return "not a Reply"  # type: ignore[return-value]


@handles(Fine)
async def fine(msg: Fine) -> Reply:
    RUNS.append("Fine")
    return Reply(1)
