"""A service group's membership and epoch in Redis (cluster mode), in Redis time.

Every member heartbeats into one sorted set (score: Redis ``TIME`` in ms, never a local
clock); every member reads the same view and computes the master from it; the recorded
master and its epoch change only through ``group_claim.lua``, atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aqnode.wal.keys import GroupKeys
from aqnode.wal.log import load_lua
from aqnode.wal.redis_errors import translated

#: members silent this long are forgotten (listed as dead until then)
FORGET_AFTER_MS = 60_000


@dataclass(frozen=True, slots=True)
class MemberRecord:
    server_id: str
    last_heartbeat_ms: int  #: Redis time
    address: str
    token: str
    pid: int


@dataclass(frozen=True, slots=True)
class GroupView:
    now_ms: int  #: Redis time when the view was read
    epoch: int
    master: str  #: the recorded master ("" before the first claim)
    members: list[MemberRecord]

    def alive(self, ttl_ms: int) -> list[MemberRecord]:
        return [m for m in self.members if self.now_ms - m.last_heartbeat_ms < ttl_ms]


@dataclass(frozen=True, slots=True)
class BeingAdopted:
    """The group declared this member dead and another node is moving its log."""

    adopter: str
    ms_left: int


@dataclass(frozen=True, slots=True)
class Fenced:
    """This process was declared dead and its log adopted: it must stop."""

    adopter: str


@dataclass(frozen=True, slots=True)
class Taken:
    """Another live process holds the server id."""

    age_ms: int
    holder: MemberRecord


class GroupStore:
    def __init__(self, client: Any, keys: GroupKeys) -> None:
        self.redis = client
        self.keys = keys
        self._scripts = {
            name: load_lua(name)
            for name in (
                "group_heartbeat",
                "group_view",
                "group_claim",
                "group_leave",
                "group_adopt",
            )
        }

    async def _eval(self, name: str, keys: list[str], *args: Any) -> Any:
        with translated(f"Redis ({name.replace('_', ' ')})"):
            return await self.redis.eval(self._scripts[name], len(keys), *keys, *args)

    async def heartbeat(
        self, server_id: str, token: str, address: str, pid: int, ttl_ms: int
    ) -> int | Taken | BeingAdopted | Fenced:
        """Record a heartbeat; the Redis time it was recorded at, who holds the id, or
        who is adopting this member's log."""
        info = json.dumps({"token": token, "address": address, "pid": pid})
        reply = await self._eval(
            "group_heartbeat",
            [
                self.keys.members,
                self.keys.info,
                self.keys.adopting(server_id),
                self.keys.fenced(server_id),
            ],
            server_id,
            token,
            info,
            ttl_ms,
        )
        if int(reply[0]) == 1:
            return int(reply[1])
        if int(reply[0]) == 2:
            return BeingAdopted(_text(reply[2]), int(reply[1]))
        if int(reply[0]) == 3:
            return Fenced(_text(reply[2]))
        return Taken(int(reply[1]), _record(server_id, 0, reply[2]))

    async def adopt(self, dead: str, adopter: str, ttl_ms: int, hold_ms: int) -> bool:
        """Take (or renew) the right to adopt ``dead``'s log; False if it is alive again
        or another node holds the right."""
        reply = await self._eval(
            "group_adopt",
            [self.keys.members, self.keys.adopting(dead), self.keys.fenced(dead)],
            dead,
            adopter,
            ttl_ms,
            "take",
            hold_ms,
        )
        return int(reply) == 1

    async def next_tokens(self, count: int) -> int:
        """Take ``count`` fencing tokens; returns the last (they are last-count+1..last)."""
        with translated("Redis (fencing tokens)"):
            return int(await self.redis.incrby(self.keys.tokens, count))

    async def adopted(self, dead: str, adopter: str) -> None:
        """Give the right up: ``dead`` may rejoin."""
        await self._eval(
            "group_adopt",
            [self.keys.members, self.keys.adopting(dead), self.keys.fenced(dead)],
            dead,
            adopter,
            0,
            "release",
            0,
        )

    async def view(self) -> GroupView:
        reply = await self._eval(
            "group_view",
            [self.keys.members, self.keys.info, self.keys.epoch],
            FORGET_AFTER_MS,
        )
        now, epoch, master, rest = int(reply[0]), int(reply[1]), _text(reply[2]), reply[3:]
        members = [
            _record(_text(rest[i]), int(float(rest[i + 1])), rest[i + 2])
            for i in range(0, len(rest), 3)
        ]
        return GroupView(now, epoch, master, members)

    async def claim(self, master: str, seen_epoch: int) -> tuple[int, str]:
        """Record ``master`` (a new epoch if it changed) if the recorded epoch is still
        ``seen_epoch``; the recorded (epoch, master) either way."""
        reply = await self._eval("group_claim", [self.keys.epoch], master, seen_epoch)
        return int(reply[0]), _text(reply[1])

    async def leave(self, server_id: str, token: str, ttl_ms: int) -> bool:
        """Be listed dead at once (the master then adopts what the log still holds)."""
        reply = await self._eval(
            "group_leave", [self.keys.members, self.keys.info], server_id, token, ttl_ms
        )
        return int(reply) == 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(server_id: str, last_ms: int, raw: Any) -> MemberRecord:
    try:
        info = json.loads(_text(raw))
    except ValueError:
        info = {}
    return MemberRecord(
        server_id,
        last_ms,
        str(info.get("address", "")),
        str(info.get("token", "")),
        int(info.get("pid", 0) or 0),
    )
