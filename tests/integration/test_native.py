"""The native protocol (the Python client's fast path) keeps every guarantee the gRPC
client has: FIFO per sender under pipelining, idempotency keys, typed replies and
errors, time-outs, reconnecting after the node restarts; it takes the same token and
TLS; and no input on its sockets ends or wedges the node.

Each guarantee test runs over gRPC, the node's Unix socket and its TCP port, against
the same real node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from aqnode.client import Client, SyncClient, Tls
from aqnode.errors import AqError, HandlerError
from tests.handlers.testkit import Fail, Get, Incr, Sleep
from tests.node_fixture import Node, running_node
from tests.redis_fixture import free_port, wait_for
from tests.tls_fixture import make_pki

TRANSPORTS = ["grpc", "native-unix", "native-tcp"]


@pytest.fixture(scope="module")
def native_node(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    redis_server.ensure_running()
    path: Path = tmp_path_factory.mktemp("native")
    with running_node(path, redis_server.url, native_listen=f"127.0.0.1:{free_port()}") as node:
        yield node


def address_of(node: Node, transport: str) -> str:
    if transport == "grpc":
        return node.address
    if transport == "native-unix":
        return f"aq+unix://{node.config_path.parent / 'data' / 'native.sock'}"
    text = node.config_path.read_text()
    native = next(line for line in text.splitlines() if line.startswith("native_listen"))
    return "aq://" + native.split('"')[1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_pipelining_sender_keeps_fifo_per_entity(
    native_node: Node, redis_url: str, transport: str
) -> None:
    r = redis.Redis.from_url(redis_url)

    async def run() -> None:
        async with Client(address_of(native_node, transport)) as client:
            await asyncio.gather(
                *(
                    client.enqueue(Incr(name=f"fifo-{e}", sender="s", seq=i))
                    for i in range(40)
                    for e in range(5)
                )
            )

    asyncio.run(run())
    for e in range(5):
        wait_for(lambda e=e: r.llen(f"t:order:fifo-{e}:s") == 40, timeout=20)
        assert [int(x) for x in r.lrange(f"t:order:fifo-{e}:s", 0, -1)] == list(range(40))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idempotency_typed_replies_errors_and_timeouts(
    native_node: Node, redis_url: str, transport: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    with SyncClient(address_of(native_node, transport)) as client:
        first = client.enqueue_and_wait(Incr(name="idem"), message_id="once")
        again = client.enqueue_and_wait(Incr(name="idem"), message_id="once")
        assert first.value == again.value == 1  # the second send ran nothing
        assert r.lrange("t:ran", 0, -1).count(b"once") == 1
        assert client.enqueue_and_wait(Get(name="idem")) == 1
        with pytest.raises(HandlerError) as failed:
            client.enqueue_and_wait(Fail(name="idem", text="boom"))
        assert failed.value.remote_type == "ValueError" and "boom" in failed.value.remote_message
        with pytest.raises(AqError) as late:
            client.enqueue_and_wait(Sleep(name="slow", ms=1500), timeout=0.2)
        assert late.value.code == "REPLY_TIMEOUT"
        with pytest.raises(AqError) as unknown:
            client.enqueue_raw("nope", "Incr", "x", {"name": "x"})
        assert unknown.value.code == "UNKNOWN_ENTITY_TYPE"
        with pytest.raises(AqError) as bad:
            client.enqueue_raw("counter", "Incr", "x", {"name": "x", "by": "many"})
        assert bad.value.code == "INVALID_PAYLOAD" and "by" in bad.value.message
        assert client.status().server_id


@pytest.mark.parametrize("transport", ["native-unix", "native-tcp"])
def test_a_native_client_reconnects_after_the_node_restarts(
    tmp_path: Path, redis_url: str, transport: str
) -> None:
    with running_node(tmp_path, redis_url, native_listen=f"127.0.0.1:{free_port()}") as node:
        address = address_of(node, transport)
        with SyncClient(address) as client:
            assert client.enqueue_and_wait(Incr(name="re")).value == 1
            node.kill()
            with pytest.raises(AqError) as gone:
                client.enqueue_and_wait(Incr(name="re"), message_id="after-kill")
            assert gone.value.code == "UNAVAILABLE"
            node.respawn()

            def serves() -> bool:
                try:
                    return (
                        client.enqueue_and_wait(Incr(name="re"), message_id="after-kill")
                        is not None
                    )
                except AqError as exc:
                    assert exc.code == "UNAVAILABLE", exc
                    return False

            wait_for(serves, timeout=30)


def test_the_token_is_checked_on_the_native_sockets(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    with running_node(
        tmp_path, redis_url, auth_token="native-s3cret", native_listen=f"127.0.0.1:{port}"
    ) as node:
        for address in (address_of(node, "native-unix"), f"aq://127.0.0.1:{port}"):
            for token in (None, "wrong"):
                with SyncClient(address, auth_token=token) as client, pytest.raises(AqError) as no:
                    client.enqueue(Incr(name="tok"))
                assert no.value.code == "UNAUTHENTICATED"
            with SyncClient(address, auth_token="native-s3cret") as client:
                assert client.enqueue_and_wait(Incr(name="tok")).value >= 1
        assert "native-s3cret" not in node.log()


def test_native_tcp_speaks_tls_with_the_nodes_certificate(tmp_path: Path, redis_url: str) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    tls = {
        "cert_file": str(pki.node.cert),
        "key_file": str(pki.node.key),
        "ca_file": str(pki.ca),
        "require_client_cert": True,
    }
    with running_node(tmp_path / "n", redis_url, tls=tls, native_listen=f"127.0.0.1:{port}"):
        address = f"aq://127.0.0.1:{port}"
        signed = Tls(str(pki.ca), str(pki.client.cert), str(pki.client.key))
        with SyncClient(address, tls=signed) as client:
            assert client.enqueue_and_wait(Incr(name="ntls")).value == 1
        for wrong in (None, Tls(str(pki.ca)), Tls(str(pki.other_ca))):
            began = time.monotonic()
            with SyncClient(address, tls=wrong) as client, pytest.raises(AqError) as refused:
                client.enqueue_and_wait(Incr(name="ntls"), timeout=30)
            assert refused.value.code == "UNAVAILABLE"
            assert time.monotonic() - began < 10


def _raw(node: Node) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(str(node.config_path.parent / "data" / "native.sock"))
    return sock


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _read_frame(sock: socket.socket) -> list[Any] | None:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return list(msgspec.msgpack.decode(body))


HELLO = msgspec.msgpack.encode([["Hello", 1, ""]])


@pytest.mark.parametrize(
    "sent",
    [
        b"\x00\x00\x00\x05garbage",  # not msgpack
        b"\xff\xff\xff\xff",  # a length over the limit
        _frame(msgspec.msgpack.encode([["Send", 1, ["counter", "Incr", "x", b"", "", ""]]])),
        _frame(msgspec.msgpack.encode([["Hello", 99, ""]])),  # another protocol
        _frame(HELLO) + _frame(b"\xc1"),  # a bad frame after a good Hello
        _frame(HELLO) + _frame(msgspec.msgpack.encode([["Send", -1, []]])),  # a bad Send
        _frame(HELLO) + b"\x00\x00\x10\x00" + b"x" * 10,  # a frame cut short, then silence
    ],
)
def test_hostile_bytes_on_the_native_socket_end_that_connection_only(
    native_node: Node, sent: bytes
) -> None:
    pids = native_node.shard_pids()
    with _raw(native_node) as sock:
        sock.sendall(sent)
        if sent.endswith(b"x" * 10):
            sock.shutdown(socket.SHUT_WR)
        frames = []
        while (frame := _read_frame(sock)) is not None:
            frames.append(frame)
    tags = [item[0] for frame in frames for item in frame]
    assert tags == [] or tags[-1] == "Goodbye", tags
    with SyncClient(address_of(native_node, "native-unix")) as client:
        assert client.enqueue_and_wait(Incr(name="after-hostile")).value >= 1
    assert native_node.proc.poll() is None and native_node.shard_pids() == pids


def test_many_silent_connections_do_not_wedge_the_node(native_node: Node) -> None:
    idle = [_raw(native_node) for _ in range(50)]
    try:
        with SyncClient(address_of(native_node, "native-unix")) as client:
            assert client.enqueue_and_wait(Incr(name="among-idle")).value >= 1
    finally:
        for sock in idle:
            sock.close()


def test_validate_reads_the_registry_over_the_native_socket(native_node: Node) -> None:
    address = address_of(native_node, "native-unix")

    def registry_ready() -> bool:
        with SyncClient(address) as client:
            return bool(client.registry().message_entries())

    wait_for(registry_ready, timeout=20)
    with SyncClient(address, validate=True) as client, pytest.raises(AqError) as bad:
        client.enqueue_raw("counter", "Incr", "v", {"name": "v", "by": "many"})
    assert bad.value.code == "INVALID_PAYLOAD" and "by" in bad.value.message


def test_a_client_given_the_grpc_address_moves_to_the_native_socket(native_node: Node) -> None:
    """transport="auto" (the default): the node's status names its native endpoints, the
    client opens one in the background and takes it once no call is in flight."""
    status = native_node.status()
    assert status.native_socket.startswith("aq+unix://") and status.native_address

    async def run() -> tuple[str, str]:
        async with (
            Client(native_node.address) as auto,
            Client(native_node.address, transport="grpc") as pinned,
        ):

            async def moved() -> bool:
                await auto.enqueue_and_wait(Incr(name="auto"))
                await pinned.enqueue_and_wait(Incr(name="auto"))
                return type(auto._connection(auto.address)).__name__ == "NativeConnection"

            deadline = time.monotonic() + 10
            while not await moved():
                assert time.monotonic() < deadline, "the client never moved to native"
            return (
                type(auto._connection(auto.address)).__name__,
                type(pinned._connection(pinned.address)).__name__,
            )

    assert asyncio.run(run()) == ("NativeConnection", "Connection")


def test_with_tls_there_is_no_plaintext_native_socket(tmp_path: Path, redis_url: str) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki.node.cert), "key_file": str(pki.node.key), "ca_file": str(pki.ca)}
    with running_node(tmp_path / "n", redis_url, tls=tls) as node:
        assert node.status().native_socket == ""
        assert not (node.config_path.parent / "data" / "native.sock").exists()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_node_that_never_answers_times_the_call_out_on_the_client(
    native_node: Node, transport: str
) -> None:
    """The client's own deadline (the call's timeout plus a grace period) ends a wait
    that the node never answers (here: the node is stopped with SIGSTOP), with a
    REPLY_TIMEOUT naming the wait; the same client works again once the node is back."""

    name = f"stopped-{transport}"

    async def run() -> tuple[AqError, float, Any]:
        # Pinned to its transport: with "auto", the call after the time-out could take the
        # native socket found meanwhile and overtake the one stuck on the gRPC stream.
        pinned = "grpc" if transport == "grpc" else "auto"
        async with Client(address_of(native_node, transport), transport=pinned) as client:
            await client.enqueue_and_wait(Incr(name=name), timeout=30)  # connected
            os.killpg(native_node.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(AqError) as timed_out:
                    call = client.enqueue_and_wait(Incr(name=name), timeout=0.2)
                    await asyncio.wait_for(call, 20)  # a missing client deadline fails here
                waited = time.monotonic() - started
            finally:
                os.killpg(native_node.pid, signal.SIGCONT)
            after = await client.enqueue_and_wait(Incr(name=name), timeout=30)
            return timed_out.value, waited, after

    error, waited, after = asyncio.run(run())
    assert error.code == "REPLY_TIMEOUT" and "no answer from" in error.message
    assert waited >= 0.2  # not before the call's own timeout
    assert after.value == 3  # the one that timed out on the client still ran, once
