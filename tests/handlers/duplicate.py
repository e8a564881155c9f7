"""Two handlers for one message class: a start-up error naming both."""

from aqnode import Command, entity_type, handles


@entity_type("dup", id_field="key")
class Ping(Command[None]):
    key: str


@handles(Ping)
async def first_ping(msg: Ping) -> None:
    return None


@handles(Ping)
async def second_ping(msg: Ping) -> None:
    return None
