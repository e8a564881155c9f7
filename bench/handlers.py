"""Handlers for the benchmarks: entity type ``bench``.

Loaded by the node under test (``handlers = ["bench.handlers"]``) and, for the same work,
by the lock-per-entity baseline's workers (``bench/baseline.py``), so that both run the
very same handler body (``work``) on the very same messages.

- ``Ping``: a fire-and-forget command. Its body (``work``) awaits ``io_ms`` of simulated
  I/O (``asyncio.sleep``) and/or spins a pure-Python loop of ``spin`` iterations (CPU
  bound); with both 0 it does nothing. The node's handler also keeps a tally per entity in
  the shard's memory: how many Pings ran, how many ran out of enqueue order (``seq`` lower
  than one already run), and how many started while another Ping of the same entity was
  still running (a single-writer violation; impossible by design).
- ``Marker``: sent last to an entity with ``enqueue_and_wait``. FIFO per entity means
  every earlier ``Ping`` of that entity has run when it does; it returns (and forgets) the
  entity's tally, so the benchmark can check that nothing went missing or ran out of order.
- ``Echo``: an ``enqueue_and_wait`` target for the latency scenario; returns its ``seq``.
"""

from __future__ import annotations

import asyncio

import msgspec

from aqnode import Command, Context, Query, entity_type, handles

ENTITY_TYPE = "bench"


class Tally(msgspec.Struct, array_like=True):
    pings: int = 0  #: Pings run since the entity's last Marker
    out_of_order: int = 0  #: of those, how many had a seq not above one run before
    overlaps: int = 0  #: how many started while another Ping of the entity was running
    last_seq: int = -1


#: the tally per entity id since that entity's last Marker (in this shard process)
TALLIES: dict[str, Tally] = {}
#: entity ids with a Ping running right now (in this shard process)
RUNNING: set[str] = set()
#: Pings handled by this shard process in all
HANDLED = 0


@entity_type(ENTITY_TYPE, id_field="id")
class Ping(Command[None]):
    id: str
    seq: int = 0
    io_ms: float = 0.0  #: awaited sleep, simulated I/O
    spin: int = 0  #: iterations of a pure-Python loop, CPU-bound work


@entity_type(ENTITY_TYPE, id_field="id")
class Marker(Query[Tally]):
    id: str


@entity_type(ENTITY_TYPE, id_field="id")
class Echo(Command[int]):
    id: str
    seq: int = 0


def spin(iterations: int) -> int:
    """A pure-Python CPU-bound loop (holds the GIL, never yields); every iteration costs
    the same (small ints only), so its time is linear in ``iterations``."""
    total = 0
    for _ in range(iterations):
        total += 1
    return total


async def work(msg: Ping) -> None:
    """The handler body both the node and the baseline run."""
    if msg.io_ms:
        await asyncio.sleep(msg.io_ms / 1000)
    if msg.spin:
        spin(msg.spin)


@handles(Ping)
async def ping(msg: Ping, ctx: Context) -> None:
    global HANDLED
    tally = TALLIES.get(msg.id)
    if tally is None:
        tally = TALLIES[msg.id] = Tally()
    if msg.id in RUNNING:
        tally.overlaps += 1
    if msg.seq <= tally.last_seq:
        tally.out_of_order += 1
    tally.last_seq = max(tally.last_seq, msg.seq)
    tally.pings += 1
    HANDLED += 1
    if msg.io_ms or msg.spin:
        RUNNING.add(msg.id)
        try:
            await work(msg)
        finally:
            RUNNING.discard(msg.id)


@handles(Marker)
async def marker(msg: Marker, ctx: Context) -> Tally:
    return TALLIES.pop(msg.id, None) or Tally()


@handles(Echo)
async def echo(msg: Echo, ctx: Context) -> int:
    return msg.seq
