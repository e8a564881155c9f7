"""Entity key -> shard, by a consistent-hash ring with virtual nodes.

The hash is blake2b (stable across processes and restarts, unlike ``hash()``), so an
entity always lands on the same shard for a given shard count.
"""

from __future__ import annotations

import bisect
import hashlib

VNODES_PER_SHARD = 160  #: ring points per shard; evens out the slices
#: entity keys whose shard a HashRing remembers (a hash and a bisect saved per message
#: of a busy entity); emptied when full, so its memory stays bounded
SHARD_CACHE_SIZE = 4096


def _point(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, shard_count: int, vnodes: int = VNODES_PER_SHARD) -> None:
        if shard_count < 1:
            raise ValueError("a ring needs at least one shard")
        self.shard_count = shard_count
        points = sorted(
            (_point(f"shard-{shard}-{v}"), shard)
            for shard in range(shard_count)
            for v in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._shards = [s for _, s in points]
        self._cache: dict[str, int] = {}  #: the ring never changes: entries never go stale

    def shard_for(self, entity_key: str) -> int:
        if self.shard_count == 1:
            return 0
        shard = self._cache.get(entity_key)
        if shard is None:
            if len(self._cache) >= SHARD_CACHE_SIZE:
                self._cache.clear()
            i = bisect.bisect(self._points, _point(entity_key))
            shard = self._cache[entity_key] = self._shards[i % len(self._shards)]
        return shard


def entity_key(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}:{entity_id}"


class MemberRing:
    """Entity key -> member name, by the same kind of ring over named members (the
    cluster's nodes): every node builds the same ring from the same member list."""

    def __init__(self, members: list[str], vnodes: int = VNODES_PER_SHARD) -> None:
        if not members:
            raise ValueError("a ring needs at least one member")
        points = sorted((_point(f"member-{m}-{v}"), m) for m in set(members) for v in range(vnodes))
        self._points = [p for p, _ in points]
        self._members = [m for _, m in points]

    def member_for(self, entity_key: str) -> str:
        i = bisect.bisect(self._points, _point(entity_key))
        return self._members[i % len(self._members)]
