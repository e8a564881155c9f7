"""Handlers for the benchmarks: entity type ``bench``, handlers that do (almost) nothing.

Loaded by the node under test (``handlers = ["bench.handlers"]``), so that a benchmark
measures the node's own cost per message: logging, routing, dispatch, reply.

- ``Ping``: a fire-and-forget no-op; it counts itself per entity, in the shard's memory.
- ``Marker``: sent last to an entity with ``enqueue_and_wait``. FIFO per entity means
  every earlier ``Ping`` of that entity has run when it does; it returns (and forgets) how
  many that was, so the benchmark can check that nothing went missing.
- ``Echo``: an ``enqueue_and_wait`` target for the latency scenario; returns its ``seq``.
"""

from __future__ import annotations

from aqnode import Command, Context, Query, entity_type, handles

ENTITY_TYPE = "bench"

#: Pings handled per entity id since that entity's last Marker (in this shard process).
SEEN: dict[str, int] = {}
#: Pings handled by this shard process in all.
HANDLED = 0


@entity_type(ENTITY_TYPE, id_field="id")
class Ping(Command[None]):
    id: str
    seq: int = 0


@entity_type(ENTITY_TYPE, id_field="id")
class Marker(Query[int]):
    id: str


@entity_type(ENTITY_TYPE, id_field="id")
class Echo(Command[int]):
    id: str
    seq: int = 0


@handles(Ping)
async def ping(msg: Ping, ctx: Context) -> None:
    global HANDLED
    HANDLED += 1
    SEEN[msg.id] = SEEN.get(msg.id, 0) + 1


@handles(Marker)
async def marker(msg: Marker, ctx: Context) -> int:
    return SEEN.pop(msg.id, 0)


@handles(Echo)
async def echo(msg: Echo, ctx: Context) -> int:
    return msg.seq
