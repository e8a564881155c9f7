"""The node's entry in the registry (SPEC 11): published, refreshed, and served.

The supervisor learns what the node handles from the first shard to be ready (the
catalogue as data, no user code) and hands it to :meth:`RegistryPublisher.offer`;
:meth:`RegistryPublisher.run` publishes it (``aqnode/wal/registry.py``) and refreshes the
entry every :data:`aqnode.registry.REFRESH_S`, so that it expires a day after the node is
gone. A Redis failure only delays the next try (doubling up to the refresh interval):
the registry never holds up messages. :meth:`RegistryPublisher.snapshot` answers the
``Registry`` RPC: the registry as Redis holds it, with this node's group as this node
handles it (what it validates with), also while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from aqnode import __version__, errors
from aqnode.config import NodeConfig
from aqnode.registry import (
    REFRESH_S,
    TTL_S,
    NodeInfo,
    NodeRecord,
    Snapshot,
    catalogue_of,
    digest_of,
    encode_catalogue,
    merge,
    with_local,
)
from aqnode.util.backoff import doubling
from aqnode.wal.registry import RegistryStore
from aqnode.wiretypes import MessageEntry

log = logging.getLogger("aqnode.registry")

RETRY_MIN_S = 1.0  #: seconds before the first retry of a failed publish


class RegistryPublisher:
    def __init__(self, redis: Any, config: NodeConfig, server_id: str) -> None:
        self.store = RegistryStore(redis, config.key_prefix, TTL_S)
        cluster = config.cluster
        self.group = config.service_group
        self.address = (cluster.advertised if cluster is not None else None) or config.listen
        self.server_id = server_id
        self.started_at = time.time()
        self.catalogue: bytes | None = None  #: what this node handles, as published
        self.digest = ""
        self.published = 0  #: publishes that landed (full or refresh)
        self._stored = False  # the catalogue is in Redis: a refresh need not resend it
        self._changed = asyncio.Event()

    def offer(self, entries: list[MessageEntry]) -> None:
        """What the node handles now (at start, or when its handler set changed)."""
        data = encode_catalogue(catalogue_of(entries))
        if data == self.catalogue:
            return
        self.catalogue, self.digest, self._stored = data, digest_of(data), False
        self._changed.set()

    def record(self) -> bytes:
        return msgspec.msgpack.encode(
            NodeRecord(
                server_id=self.server_id,
                service_group=self.group,
                address=self.address,
                version=__version__,
                started_at=self.started_at,
                catalogue=self.digest,
            )
        )

    async def run(self) -> None:
        """Publish when the catalogue changes, refresh every REFRESH_S, retry failures."""
        failures = 0
        while True:
            if self.catalogue is None:
                await self._changed.wait()
            self._changed.clear()
            try:
                await self.publish()
            except errors.RedisUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning("publishing to the registry failed (%s); retrying", exc.message)
                delay = doubling(RETRY_MIN_S, REFRESH_S, failures)
            else:
                if failures:
                    log.info("published to the registry")
                failures, delay = 0, REFRESH_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    async def publish(self) -> None:
        catalogue = self.catalogue
        if catalogue is None:
            return
        record, digest = self.record(), self.digest
        refreshed = self._stored and await self.store.publish(self.server_id, record, digest, None)
        if not refreshed:
            await self.store.publish(self.server_id, record, digest, catalogue)
        if catalogue == self.catalogue:
            self._stored = True
        self.published += 1

    async def snapshot(self) -> Snapshot:
        """The registry, with this node's group as this node handles it."""
        try:
            view = await self.store.read()
            snapshot = merge(view.records, view.catalogues, self.group)
        except errors.RedisUnavailable as exc:
            log.warning("reading the registry failed (%s); serving this node's part", exc)
            snapshot = Snapshot(groups=(), local_group=self.group)
        if self.catalogue is None:
            return snapshot
        me = NodeInfo(
            server_id=self.server_id,
            address=self.address,
            version=__version__,
            started_at=self.started_at,
            last_seen=time.time(),
            catalogue=self.digest,
        )
        return with_local(snapshot, self.group, me, self.catalogue)
