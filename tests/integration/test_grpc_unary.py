"""The gRPC service as another language would use it: unary calls, JSON payloads, and the
SPEC error code in the trailing metadata (protos/aqnode/v1/aqnode.proto)."""

from __future__ import annotations

import json

import grpc
import pytest

from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from tests.node_fixture import Node


def envelope(message: str, name: str, data: dict[str, object], **extra: str) -> pb.Envelope:
    return pb.Envelope(
        entity_type="counter",
        message=message,
        entity_id=name,
        payload=json.dumps(data).encode(),
        content_type="application/json",
        **extra,
    )


def test_unary_calls_with_json(fresh: Node) -> None:
    with grpc.insecure_channel(fresh.address) as channel:
        stub = pb_grpc.AqNodeStub(channel)
        sent = stub.Enqueue(pb.EnqueueRequest(envelope=envelope("Incr", "u", {"name": "u"})))
        assert sent.message_id
        many = stub.EnqueueMany(
            pb.EnqueueManyRequest(
                envelopes=[
                    envelope("Incr", "u", {"name": "u", "by": 2}),
                    envelope("Nope", "u", {"name": "u"}),
                ]
            )
        )
        assert [o.ok for o in many.outcomes] == [True, False]
        assert many.outcomes[1].failure.code == "UNKNOWN_MESSAGE"
        reply = stub.EnqueueAndWait(
            pb.EnqueueAndWaitRequest(envelope=envelope("Get", "u", {"name": "u"}), timeout_ms=5000)
        )
        assert reply.content_type == "application/json"
        assert json.loads(reply.reply) == 3
        status = stub.Status(pb.StatusRequest())
        assert status.server_id == "test-node" and len(status.shards) == 2


def test_unary_errors_carry_the_spec_code(fresh: Node) -> None:
    with grpc.insecure_channel(fresh.address) as channel:
        stub = pb_grpc.AqNodeStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Enqueue(
                pb.EnqueueRequest(envelope=envelope("Incr", "u", {"name": "u", "by": "x"}))
            )
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("INVALID_PAYLOAD: ")
        metadata = dict(error.trailing_metadata())
        assert metadata["aq-code"] == "INVALID_PAYLOAD"
        assert json.loads(metadata["aq-error-bin"])["field"] == "by"
        with pytest.raises(grpc.RpcError) as failed:
            stub.EnqueueAndWait(
                pb.EnqueueAndWaitRequest(
                    envelope=envelope("Fail", "u", {"name": "u", "text": "nope"})
                )
            )
        details = json.loads(dict(failed.value.trailing_metadata())["aq-error-bin"])
        assert details["code"] == "HANDLER_ERROR" and details["remote_message"] == "nope"
