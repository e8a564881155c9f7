"""A gRPC ``Session`` whose client sends and does not read (SPEC: no client input may end
or wedge the supervisor): the node stops taking its frames once its answers back up, as
the native protocol does, instead of gathering answers without bound; every call it took
is still answered, in order, once the client reads; and a client that cancels with
answers pending is a normal end, not an ERROR in the node's log.

How many calls gRPC pulled from the client's request iterator shows how many the node
took: with backpressure the node stops reading the stream, HTTP/2 flow control stops the
client's writes, and gRPC stops asking the iterator for frames.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc

from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from tests.node_fixture import Node

CALLS_PER_FRAME = 500
FRAMES = 240  #: 120,000 calls: without backpressure the node takes them all unread
TOTAL = CALLS_PER_FRAME * FRAMES
#: calls the node (and the buffers between it and the client) may take while nothing is
#: read: its bound (20,000 answers) and what gRPC's buffers hold on top, with room
TAKEN_BOUND = TOTAL // 2
ID = "e" * 1000  #: an entity id that disagrees with the payload's: refused at validation
PAYLOAD = json.dumps({"name": "y" * 1000}).encode()
QUIET_S = 1.0  #: the request iterator not pulled for this long: the node stopped reading
DEADLINE_S = 15.0
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def frame(index: int) -> pb.ClientFrame:
    first = index * CALLS_PER_FRAME + 1
    return pb.ClientFrame(
        calls=[
            pb.Call(
                call_id=call_id,
                envelope=pb.Envelope(
                    entity_type="counter",
                    message="Incr",
                    entity_id=ID,
                    payload=PAYLOAD,
                    content_type="application/json",
                ),
                wait=True,
            )
            for call_id in range(first, first + CALLS_PER_FRAME)
        ]
    )


class Flood:
    """The client's request iterator: FRAMES frames of refused calls, counting how many
    calls gRPC has pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0
        self.done = False

    async def frames(self) -> AsyncIterator[pb.ClientFrame]:
        for index in range(FRAMES):
            item = frame(index)
            self.pulled += len(item.calls)
            yield item
        self.done = True


async def until_stalled(flood: Flood) -> int:
    """Wait until gRPC has pulled every frame, or has pulled none for QUIET_S (the node
    stopped reading); return how many calls it pulled."""
    deadline = time.monotonic() + DEADLINE_S
    seen, since = flood.pulled, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if flood.pulled >= TOTAL:
            return flood.pulled
        if flood.pulled != seen:
            seen, since = flood.pulled, time.monotonic()
        elif time.monotonic() - since >= QUIET_S:
            return seen
    raise AssertionError(f"the flood neither ended nor stalled: {flood.pulled} calls pulled")


def errors_logged(node: Node) -> list[str]:
    return [
        line
        for line in node.log().splitlines()
        if " ERROR " in line or "Traceback" in line or "ExecuteBatchError" in line
    ]


def test_a_session_not_read_is_not_read_and_every_call_is_answered_in_order(node: Node) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(node.address, options=GRPC_OPTIONS) as channel:
            flood = Flood()
            call = pb_grpc.AqNodeStub(channel).Session(flood.frames())
            taken = await until_stalled(flood)
            assert taken <= TAKEN_BOUND, (
                f"the node took {taken} of {TOTAL} calls while none of their answers was read"
            )
            assert node.proc.poll() is None
            # Now read: the node takes the rest, and every call gets one answer, in order.
            ids: list[int] = []
            codes: set[str] = set()
            async for server_frame in call:
                for outcome in server_frame.outcomes:
                    ids.append(outcome.call_id)
                    codes.add(outcome.failure.code)
            assert flood.done
            assert len(ids) == TOTAL
            assert ids == list(range(1, TOTAL + 1)), "answers lost, repeated or out of order"
            assert codes == {"INVALID_PAYLOAD"}
            assert await call.code() == grpc.StatusCode.OK

    asyncio.run(main())
    assert node.proc.poll() is None
    assert not errors_logged(node), "\n".join(errors_logged(node))


def test_a_client_that_cancels_with_answers_pending_is_no_error(node: Node) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(node.address, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.AqNodeStub(channel)
            flood = Flood()
            call = stub.Session(flood.frames())
            await until_stalled(flood)
            call.cancel()
            assert await call.code() == grpc.StatusCode.CANCELLED
            # A stream on the same connection after the cancel: answered as usual.
            after = [
                outcome.call_id
                async for server_frame in stub.Session(_one_frame())
                for outcome in server_frame.outcomes
            ]
            assert after == list(range(1, CALLS_PER_FRAME + 1))

    asyncio.run(main())
    assert node.proc.poll() is None
    assert node.status().shards
    assert not errors_logged(node), "\n".join(errors_logged(node))


async def _one_frame() -> AsyncIterator[pb.ClientFrame]:
    yield frame(0)
