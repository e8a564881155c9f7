"""Review: `_bounded` cuts error texts by characters, but JSON escapes (ensure_ascii) and
base64 make a non-ASCII character up to 16 bytes of metadata. A handler error whose text is
a few thousand non-ASCII characters exceeds gRPC's metadata limit: the unary caller gets
RESOURCE_EXHAUSTED without aq-error-bin, which `client.rpc_error` turns into
PAYLOAD_TOO_LARGE. Fails on cde5013.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from aqnode.client import rpc_error
from aqnode.supervisor.grpc_api import abort


def test_review_a_non_ascii_handler_error_keeps_its_code_over_unary_grpc() -> None:
    text = "é" * 3000  # e.g. a localised message repeated in the traceback

    async def body() -> Any:
        async def handler(request: bytes, context: Any) -> bytes:
            await abort(
                context,
                {
                    "code": "HANDLER_ERROR",
                    "message": text,
                    "remote_type": "ValueError",
                    "remote_message": text,
                    "remote_traceback": text,
                },
            )
            return b""

        server = grpc.aio.server()
        rpc = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"M": rpc}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await channel.unary_unary("/t.S/M")(b"")
                except grpc.aio.AioRpcError as exc:
                    return exc
        finally:
            await server.stop(None)
        raise AssertionError("the call did not fail")

    exc = asyncio.run(body())
    assert exc.code() == grpc.StatusCode.ABORTED, exc.details()
    assert rpc_error(exc, "node").code == "HANDLER_ERROR"
