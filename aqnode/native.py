"""The native protocol: the Python client's fast path to a node, next to gRPC.

The same frames as between supervisor and shard (:mod:`aqnode.ipc`: a uint32 length and
a msgpack array of tagged items, every item of one event-loop tick in one frame), over
TCP (``native_listen``, TLS with ``[tls]``) or the node's Unix socket
(``<data_dir>/native.sock``). gRPC stays for other languages and for peers.

A connection opens with the client's :class:`Hello` (protocol version and auth token);
the node answers :class:`Welcome` or :class:`Goodbye` (the error, then it closes). Then
the client sends :class:`Send` items (one call each, with an id of its choosing),
:class:`AskStatus` and :class:`AskRegistry`; the node answers each call once with
:class:`Answer`, in any order across entities, and the others with their answers. A
frame the node cannot decode ends the connection with :class:`Goodbye`. Calls on one
connection keep their order per entity, as on a gRPC ``Session`` stream.

Addresses: ``aq://HOST:PORT`` (TCP) and ``aq+unix:///path/to/native.sock``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from aqnode.bus import Envelope, SendResult

PROTOCOL = 1
TCP_SCHEME = "aq://"
UNIX_SCHEME = "aq+unix://"
SOCKET_NAME = "native.sock"  #: the node's Unix socket, in its data_dir
#: bytes a client gathers into one frame (a larger single call goes alone)
CLIENT_FRAME_BYTES = 8 * 1024 * 1024
#: seconds a new connection may take to say Hello before the node closes it
HELLO_TIMEOUT_S = 10.0


class _Item(msgspec.Struct, tag=True, array_like=True, omit_defaults=False):
    pass


# ---- client -> node --------------------------------------------------------------------


class Hello(_Item):
    protocol: int
    token: str = ""


class Send(_Item):
    call_id: int
    envelope: Envelope
    wait: bool = False
    timeout_ms: int = 0


class AskStatus(_Item):
    request_id: int


class AskRegistry(_Item):
    """The registry snapshot (msgpack, :class:`aqnode.registry.Snapshot`), for the
    client's ``validate=True``."""

    request_id: int


ToNode = Hello | Send | AskStatus | AskRegistry


# ---- node -> client --------------------------------------------------------------------


class Welcome(_Item):
    protocol: int
    server_id: str


class Goodbye(_Item):
    """The node refuses the connection or ends it: ``error`` as ``AqError.to_dict()``."""

    error: dict[str, Any]


class Answer(_Item):
    call_id: int
    result: SendResult


class StatusAnswer(_Item):
    request_id: int
    status: bytes  #: a serialized ``aqnode.v1.StatusReply``


class RegistryAnswer(_Item):
    request_id: int
    registry: bytes = b""  #: the msgpack snapshot
    error: dict[str, Any] | None = None  #: the node could not read it (Redis away, say)


ToClient = Welcome | Goodbye | Answer | StatusAnswer | RegistryAnswer


def is_native(address: str) -> bool:
    return address.startswith((TCP_SCHEME, UNIX_SCHEME))
