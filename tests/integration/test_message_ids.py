"""The ids the node makes up cannot be taken ahead by a client's idempotency key."""

from __future__ import annotations

import re

from tests.handlers.testkit import Counted, Incr
from tests.node_fixture import Node


def test_a_client_cannot_take_the_id_the_node_will_make_up_next(fresh: Node) -> None:
    with fresh.client() as bus:
        first = bus.enqueue(Incr(name="ids-a"))
        # Given a client that claims what the next generated ids would be if they were
        # `<boot>-<counter>` (the review's attack), and a few more of their neighbours
        boot, counter = first.split("-")[:2]
        n = int(counter, 16)
        taken = [f"{boot}-{n + i:x}" for i in range(1, 6)]
        taken += [f"{boot}-{n + i:x}-{first.split('-')[2]}" for i in range(1, 6)]
        for key in taken:
            bus.enqueue(Incr(name="ids-claimer"), message_id=key)
        # When the node makes up ids for other entities' messages
        made = [bus.enqueue(Incr(name=f"ids-b{i}")) for i in range(5)]
        # Then each is new, and each message really runs: its own entity counts to 1
        assert not set(made) & set(taken)
        for i in range(5):
            assert bus.enqueue_and_wait(Incr(name=f"ids-b{i}", by=0)) == Counted(f"ids-b{i}", 1)
        assert bus.enqueue_and_wait(Incr(name="ids-claimer", by=0)) == Counted("ids-claimer", 10)
    pattern = re.compile(r"[0-9a-f]{10}-[0-9a-f]+-[0-9a-f]{12}")
    assert all(pattern.fullmatch(m) for m in [first, *made]), [first, *made]
    assert len({m.split("-")[2] for m in made}) == len(made)
