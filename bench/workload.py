"""Workloads: which entity gets which message, in which order.

Both the node and the baseline are fed the very same list of ``Ping`` messages, in the
same order; ``seq`` numbers each entity's messages in enqueue order (0, 1, 2, ...).

- ``uniform``: every entity gets the same number of messages, sent round robin (message k
  of every entity before message k+1 of any), so every entity has work from the start.
- ``hot``: the first 10 % of the entities get 80 % of the messages, the rest share the
  other 20 % as evenly as possible; the send order is a seeded shuffle (the same for
  every run with the same seed), so hot entities' messages are spread over the whole
  send, as with real traffic.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.handlers import Ping, spin

DISTRIBUTIONS = ("uniform", "hot")
HOT_ENTITY_SHARE = 0.10
HOT_MESSAGE_SHARE = 0.80


@dataclass
class Workload:
    pings: list[Ping]
    counts: dict[str, int]  #: entity id -> how many Pings it gets

    @property
    def ids(self) -> list[str]:
        return list(self.counts)


def _spread(total: int, buckets: int) -> list[int]:
    base, extra = divmod(total, buckets)
    return [base + (1 if i < extra else 0) for i in range(buckets)]


def make_workload(
    tag: str,
    entities: int,
    per_entity: int,
    distribution: str,
    *,
    io_ms: float = 0.0,
    spin_iterations: int = 0,
    seed: int = 4,
) -> Workload:
    """``entities`` x ``per_entity`` Pings in all, spread by ``distribution``."""
    ids = [f"{tag}-{e}" for e in range(entities)]
    total = entities * per_entity
    if distribution == "uniform":
        order = [e for _ in range(per_entity) for e in range(entities)]
        counts = [per_entity] * entities
    elif distribution == "hot":
        hot = max(1, round(entities * HOT_ENTITY_SHARE))
        hot_total = round(total * HOT_MESSAGE_SHARE) if hot < entities else total
        counts = _spread(hot_total, hot) + (
            _spread(total - hot_total, entities - hot) if hot < entities else []
        )
        order = [e for e, n in enumerate(counts) for _ in range(n)]
        random.Random(seed).shuffle(order)
    else:
        raise ValueError(f"unknown distribution {distribution!r}")
    next_seq = [0] * entities
    pings = []
    for e in order:
        pings.append(Ping(id=ids[e], seq=next_seq[e], io_ms=io_ms, spin=spin_iterations))
        next_seq[e] += 1
    return Workload(pings, {ids[e]: n for e, n in enumerate(counts) if n})


def calibrate_spin(target_ms: float, rounds: int = 7) -> int:
    """Iterations of ``handlers.spin`` that take about ``target_ms`` of CPU on this
    interpreter: the fastest of a few rounds, timed in this thread's CPU time, so that
    other processes on a busy machine do not make the loop look slower than it is."""
    probe = 200_000
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        spin(probe)
        best = min(best, time.thread_time() - t0)
    return max(1, round(probe * (target_ms / 1000) / best))
