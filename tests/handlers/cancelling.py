"""A handler that leaks a CancelledError (it awaited something that was cancelled)."""

import asyncio

from aqnode import Command, entity_type, handles


@entity_type("thing", id_field="key")
class Boom(Command[None]):
    key: str


@entity_type("thing", id_field="key")
class Fine(Command[str]):
    key: str


@handles(Boom)
async def boom(msg: Boom) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


@handles(Fine)
async def fine(msg: Fine) -> str:
    return "fine"
