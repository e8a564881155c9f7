"""The registry's keys in Redis (SPEC 11): node entries and their catalogues, as bytes.

What the bytes mean is :mod:`aqnode.registry`'s business; this module only stores and
fetches them, in Redis time. The keys share the hash tag ``{reg}`` (``wal/keys.py``),
so each script touches one slot. A node publishes with ``registry_publish.lua``, which
also drops entries not refreshed for ``ttl_ms`` and makes every key expire ``ttl_ms``
after the last publish; readers (the node serving the ``Registry`` RPC, the CLI) leave
out entries older than that with ``registry_view.lua``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from aqnode.wal.keys import RegistryKeys
from aqnode.wal.log import load_lua
from aqnode.wal.redis_errors import translated


@dataclass(frozen=True, slots=True)
class RegistryView:
    """What Redis holds: node records with their last publish, and their catalogues."""

    now: float  #: Redis time, unix seconds
    records: list[tuple[bytes, float]]  #: (node record, last publish in unix seconds)
    catalogues: dict[str, bytes]  #: digest -> catalogue


class RegistryStore:
    """One Redis client's view of the registry; ``client`` is a ``redis.asyncio`` client
    for the async methods, a blocking ``redis.Redis`` for :meth:`read_sync`."""

    def __init__(self, client: Any, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.keys = RegistryKeys(prefix)
        self.ttl_ms = ttl_s * 1000
        self._publish = load_lua("registry_publish")
        self._view = load_lua("registry_view")

    async def publish(
        self, server_id: str, record: bytes, digest: str, catalogue: bytes | None
    ) -> bool:
        """Write (or, with ``catalogue=None``, refresh) this node's entry; False when a
        refresh found no stored catalogue (send it again in full)."""
        keys = [self.keys.seen, self.keys.nodes, self.keys.catalogue(digest)]
        with translated("Redis (registry publish)"):
            done = await self.redis.eval(
                self._publish, len(keys), *keys, server_id, record, catalogue or b"", self.ttl_ms
            )
        return int(done) == 1

    async def read(self) -> RegistryView:
        with translated("Redis (registry read)"):
            reply = await self.redis.eval(
                self._view, 2, self.keys.seen, self.keys.nodes, self.ttl_ms
            )
            now, records, digests = _records(reply)
            found = {d: await self.redis.get(self.keys.catalogue(d)) for d in digests}
        return RegistryView(now, records, {d: bytes(v) for d, v in found.items() if v})

    def read_sync(self) -> RegistryView:
        with translated("Redis (registry read)"):
            reply = self.redis.eval(self._view, 2, self.keys.seen, self.keys.nodes, self.ttl_ms)
            now, records, digests = _records(reply)
            found = {d: self.redis.get(self.keys.catalogue(d)) for d in digests}
        return RegistryView(now, records, {d: bytes(v) for d, v in found.items() if v})


def _records(reply: list[Any]) -> tuple[float, list[tuple[bytes, float]], list[str]]:
    """``registry_view``'s reply as (now, records, the digests they point to)."""
    now = int(reply[0]) / 1000
    records: list[tuple[bytes, float]] = []
    digests: list[str] = []
    rest = reply[1:]
    for i in range(0, len(rest), 3):
        record = bytes(rest[i + 2])
        records.append((record, int(float(rest[i + 1])) / 1000))
        try:  # only the digest is read here; the rest is aqnode.registry's
            digest = msgspec.msgpack.decode(record).get("catalogue")
        except Exception:  # a damaged entry: the reader leaves it out
            continue
        if isinstance(digest, str) and digest not in digests:
            digests.append(digest)
    return now, records, digests
