"""Every Redis key name aqnode uses, in one place.

All keys of one node's log share the hash tag ``{<node>}``, so that a Lua script that
touches a batch of entries touches one slot and runs unchanged on Redis Cluster::

    <prefix>:{<node>}:seq          string   the node's sequence counter
    <prefix>:{<node>}:live         zset     id -> sequence, every non-terminal entry
    <prefix>:{<node>}:done         zset     id -> finished_at, terminal entries to clean
    <prefix>:{<node>}:dlq          zset     id -> dead_lettered_at, the dead-letter queue
    <prefix>:{<node>}:m:<id>       hash     one message (state, payload, times, outcome)
    <prefix>:{<node>}:fence        string   cluster: set when the node was declared dead
                                            and its log adopted (no enqueue, no dispatch)
    <prefix>:nodes                 set      every node id that ever wrote a log here

A cluster's service group has keys of its own, under the hash tag ``{grp:<group>}``, so
that each group script touches one slot::

    <prefix>:{grp:<group>}:members  zset   server id -> last heartbeat (Redis time, ms)
    <prefix>:{grp:<group>}:info     hash   server id -> JSON {token, address, pid, started}
    <prefix>:{grp:<group>}:epoch    hash   {epoch, master}: the recorded master and its epoch
    <prefix>:{grp:<group>}:adopting:<id>  string  the node adopting dead member <id>'s log
    <prefix>:{grp:<group>}:fenced:<id>    string  set when <id> was declared dead and adopted
    <prefix>:{grp:<group>}:tokens         string  fencing-token counter (ctx.fencing_token)

The registry (SPEC 11: what every node handles) shares one hash tag, ``{reg}``, so its
scripts touch one slot; every key expires a day after the last publish::

    <prefix>:{reg}:seen            zset    server id -> last publish (Redis time, ms)
    <prefix>:{reg}:nodes           hash    server id -> node record (msgpack)
    <prefix>:{reg}:cat:<digest>    string  a catalogue (msgpack), stored once per content
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


def nodes_key(prefix: str) -> str:
    return f"{prefix}:nodes"


@dataclass(frozen=True)
class LogKeys:
    """One node's log keys (cached: the log names them for every message it commits)."""

    prefix: str
    node_id: str

    @cached_property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.node_id}}}"

    @cached_property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @cached_property
    def live(self) -> str:
        return f"{self.base}:live"

    @cached_property
    def done(self) -> str:
        return f"{self.base}:done"

    @cached_property
    def dlq(self) -> str:
        return f"{self.base}:dlq"

    @cached_property
    def fence(self) -> str:
        return f"{self.base}:fence"

    @cached_property
    def nodes(self) -> str:
        return nodes_key(self.prefix)

    @cached_property
    def entry_prefix(self) -> str:
        return f"{self.base}:m:"

    def entry(self, message_id: str) -> str:
        return self.entry_prefix + message_id


@dataclass(frozen=True)
class GroupKeys:
    prefix: str
    group: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{grp:{self.group}}}"

    @property
    def members(self) -> str:
        return f"{self.base}:members"

    @property
    def info(self) -> str:
        return f"{self.base}:info"

    @property
    def epoch(self) -> str:
        return f"{self.base}:epoch"

    @property
    def tokens(self) -> str:
        """The group's fencing-token counter (INCR): every new owner of an entity takes
        a token from it, so an entity's token grows with every change of owner."""
        return f"{self.base}:tokens"

    def adopting(self, server_id: str) -> str:
        return f"{self.base}:adopting:{server_id}"

    def fenced(self, server_id: str) -> str:
        return f"{self.base}:fenced:{server_id}"


@dataclass(frozen=True)
class RegistryKeys:
    prefix: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{reg}}"

    @property
    def seen(self) -> str:
        return f"{self.base}:seen"

    @property
    def nodes(self) -> str:
        return f"{self.base}:nodes"

    def catalogue(self, digest: str) -> str:
        return f"{self.base}:cat:{digest}"
