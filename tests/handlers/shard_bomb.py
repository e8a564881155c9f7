"""Imports fine in the supervisor, kills every shard process that imports it."""

import os
import sys

from aqnode import Command, entity_type, handles

if getattr(sys.modules["__main__"].__spec__, "name", "").startswith("aqnode.shard"):
    os._exit(9)


@entity_type("bomb", id_field="key")
class Tick(Command[None]):
    key: str


@handles(Tick)
async def tick(msg: Tick) -> None:
    return None
