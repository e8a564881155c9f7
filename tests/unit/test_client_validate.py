"""``Client(..., validate=True)`` without a node: the registry read keeps the caller's
order, is shared by the calls that wait for it, is read again for an unknown message,
and refuses without sending anything.

The node's side (the same errors, nothing reaching it) is in
``tests/integration/test_registry.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from aqnode import Command, entity_type
from aqnode.bus import Envelope, SendResult
from aqnode.client import Client
from aqnode.errors import ValidationFailed
from aqnode.registry import Snapshot
from tests.unit.test_codegen import snapshot_of


@entity_type("counter", id_field="name")
class Bump(Command[int]):
    name: str
    by: int = 1


class FakeConnection:
    """Records what is posted, in order, and answers at once."""

    def __init__(self, posted: list[str]) -> None:
        self.posted = posted

    def post(self, envelopes: list[Envelope], *, wait: bool, timeout_ms: int = 0) -> list[Any]:
        futures = []
        for env in envelopes:
            self.posted.append(f"{env.message}:{msgspec.msgpack.decode(env.payload)['by']}")
            future = asyncio.get_running_loop().create_future()
            future.set_result(SendResult(f"id-{len(self.posted)}", True))
            futures.append(future)
        return futures

    async def close(self) -> None:
        pass


class OfflineClient(Client):
    """A validating client whose node is this process: the registry comes when let."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        super().__init__("127.0.0.1:1", validate=True)
        self.snapshots = snapshots
        self.reads = 0
        self.let = asyncio.Event()
        self.posted: list[str] = []
        self.fake = FakeConnection(self.posted)

    def _connection(self, address: str) -> Any:
        return self.fake

    async def registry(self, timeout: float = 5.0) -> Snapshot:
        self.reads += 1
        await self.let.wait()
        return self.snapshots[min(self.reads, len(self.snapshots)) - 1]


def test_calls_made_while_the_registry_is_read_keep_their_order() -> None:
    async def main() -> list[str]:
        client = OfflineClient([snapshot_of({"g": [Bump]})])
        sends = [
            client.enqueue_raw("counter", "Bump", "c", {"by": 1}),
            client.enqueue(Bump(name="c", by=2)),  # typed: not validated, still in order
            client.enqueue_raw("counter", "Bump", "c", {"by": 3}),
            client.enqueue(Bump(name="c", by=4)),
        ]
        tasks = [asyncio.ensure_future(s) for s in sends]
        for _ in range(5):
            await asyncio.sleep(0)
        assert client.posted == [] and client.reads == 1  # all wait for one read
        client.let.set()
        await asyncio.gather(*tasks)
        # Once read, the registry is used without waiting: posted in the same tick.
        later = asyncio.ensure_future(client.enqueue_raw("counter", "Bump", "c", {"by": 5}))
        await asyncio.sleep(0)  # one step of that task: validated and posted, no wait
        assert client.posted[-1] == "Bump:5"
        await later
        assert client.reads == 1
        return client.posted

    assert asyncio.run(main()) == ["Bump:1", "Bump:2", "Bump:3", "Bump:4", "Bump:5"]


def test_a_message_the_registry_lacks_is_read_again_then_refused_as_the_node_would() -> None:
    async def main() -> OfflineClient:
        client = OfflineClient([snapshot_of({"g": [Bump]})])
        client.let.set()
        with pytest.raises(ValidationFailed) as refused:
            await client.enqueue_raw("counter", "Bump", "c", {"by": "two"})
        assert refused.value.code == "INVALID_PAYLOAD"
        assert refused.value.details["field"] == "by"
        client._validator_read_at = 0.0  # the last read is old: an unknown message reads again
        with pytest.raises(ValidationFailed) as unknown:
            await client.enqueue_raw("counter", "Reset", "c", {})
        assert unknown.value.code == "UNKNOWN_MESSAGE" and client.reads == 2
        with pytest.raises(ValidationFailed):  # read a moment ago: not again
            await client.enqueue_raw("parcel", "Ship", "p", {})
        assert client.reads == 2
        return client

    client = asyncio.run(main())
    assert client.posted == []  # nothing refused was sent
