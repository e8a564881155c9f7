"""What ``Client.status()`` returns and ``aqnode status --json`` prints (SPEC 10.1, 12).

Typed Structs rather than the gRPC ``StatusReply``: protobuf's JSON has camelCase keys,
64-bit counts as strings and no fixed key order, and its objects are awkward to annotate.
msgspec encodes a Struct's fields in the order they are declared here, so that order is
the document's; every key is snake_case and every count a JSON number.
"""

from __future__ import annotations

from typing import Any

import msgspec

from aqnode.v1 import aqnode_pb2 as pb


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """One node of the service group, as the answering node sees it."""

    server_id: str
    address: str  #: HOST:PORT that peers and clients use
    alive: bool
    role: str  #: "master", "replica" or "standalone"


class ShardStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One shard process of the node."""

    index: int
    pid: int  #: 0 while the shard is not started
    alive: bool  #: started, handshaken and its process still there
    cpu_percent: float  #: since the previous status call
    rss_bytes: int
    workers: int  #: entity workers, as of the shard's last heartbeat
    queue_depth: int  #: messages queued or running in the shard
    handled: int  #: messages finished since the shard started
    handled_per_s: float  #: over the last few heartbeats
    restarts: int


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A node's view of itself and its group."""

    server_id: str
    service_group: str
    role: str  #: "master", "replica", or "standalone" without cluster mode
    master: str  #: the master's server_id (a standalone node is its own)
    epoch: int  #: grows with every change of master, and only then
    members: list[Member]
    listen: str
    pid: int  #: the supervisor's
    version: str
    uptime_s: float
    live_messages: int  #: enqueued or dispatched, not yet finished
    shards: list[ShardStatus]
    #: the native protocol: "aq://HOST:PORT" (native_listen) or ""; its Unix socket as
    #: "aq+unix:///path", or "" when it has none
    native_address: str = ""
    native_socket: str = ""

    def to_json(self, indent: int = 2) -> str:
        """The document ``aqnode status --json`` prints."""
        return msgspec.json.format(msgspec.json.encode(self), indent=indent).decode()


def status_from_pb(reply: pb.StatusReply) -> NodeStatus:
    return NodeStatus(
        server_id=reply.server_id,
        service_group=reply.service_group,
        role=reply.role,
        master=reply.master,
        epoch=int(reply.epoch),
        members=_members(reply),
        listen=reply.listen,
        pid=int(reply.pid),
        version=reply.version,
        uptime_s=float(reply.uptime_s),
        live_messages=int(reply.live_messages),
        shards=[_shard(s) for s in reply.shards],
        native_address=reply.native_address,
        native_socket=reply.native_socket,
    )


def _shard(s: pb.ShardStatus) -> ShardStatus:
    return ShardStatus(
        index=int(s.index),
        pid=int(s.pid),
        alive=bool(s.alive),
        cpu_percent=float(s.cpu_percent),
        rss_bytes=int(s.rss_bytes),
        workers=int(s.workers),
        queue_depth=int(s.queue_depth),
        handled=int(s.handled),
        handled_per_s=float(s.handled_per_s),
        restarts=int(s.restarts),
    )


def _members(reply: pb.StatusReply) -> list[Member]:
    # StatusReply has no member list yet; read one if the node sends it (cluster mode),
    # else the node is a group of one: itself.
    listed: Any = getattr(reply, "members", ())
    if listed:
        return [
            Member(server_id=m.server_id, address=m.address, alive=bool(m.alive), role=m.role)
            for m in listed
        ]
    return [Member(server_id=reply.server_id, address=reply.listen, alive=True, role=reply.role)]
