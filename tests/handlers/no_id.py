"""A message class with no entity id field: a start-up error naming it."""

from aqnode import Command, entity_type, handles


@entity_type("orphan")
class Lost(Command[None]):
    key: str


@handles(Lost)
async def lost(msg: Lost) -> None:
    return None
