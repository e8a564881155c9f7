"""Adopting a dead member's log: its messages run on the entities' new owners.

Only the master adopts, and only with the right to (``group_adopt.lua``: refused while
the member's heartbeat is fresh; while it is held the member cannot rejoin). Then:

1. the log's live entries are read and their entities *held*: the master answers
   petitions for them with ``MASTER_REBUILDING`` until they have moved, so that no new
   call overtakes the old ones;
2. `dispatched` entries may have been running when the node died: they are interrupted
   (dead-lettered, or requeued with ``on_interrupt = "retry"``), never re-run blindly;
3. `enqueued` entries are sent to their entities' new owners under their own message ids
   (an owner that has one already keeps it: adopting twice moves each message once), one
   message per entity per round so that a refusal cannot let a later message overtake an
   earlier one, then marked `moved` in the dead node's log.

A failure (Redis, an owner that refuses) leaves the rest held and the log as it is; the
next view tries again. What moved stays moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.catalogue import MSGPACK
from aqnode.config import NodeConfig
from aqnode.util.ring import entity_key
from aqnode.wal import InterruptEntry, LogKeys, LogState, WriteAheadLog
from aqnode.wal.group import GroupStore
from aqnode.wal.log import Applied, Outcome, Refused, TombstoneEntry

if TYPE_CHECKING:
    from aqnode.supervisor.live import Call

log = logging.getLogger("aqnode.cluster")

HOLD_MS = 30_000  #: how long the right to adopt lasts unless renewed (each round renews it)
INTERRUPT_RETRY_FLOOR = 3  #: as on one node: on_interrupt = "retry" runs at most this often
ROUND_TIMEOUT_S = 30.0  #: seconds one round of moves may take before the adoption fails


#: states an entry may have reached on its own before the fence (its handler finished)
_ENDED = frozenset({LogState.COMPLETED, LogState.FAILED, LogState.INTERRUPTED})


class AdoptionFailed(Exception):
    pass


class Adoption:
    """One dead member's log, being moved by this node."""

    def __init__(
        self,
        dead: str,
        me: str,
        store: GroupStore,
        redis: Any,
        config: NodeConfig,
        submit: Callable[[list[Call]], None],
        make_call: Callable[[Envelope, Callable[[SendResult], None], bool, int], Call],
    ) -> None:
        self.dead = dead
        self.me = me
        self._store = store
        self._config = config
        self._submit = submit
        self._make_call = make_call
        self._ttl_ms = config.cluster.node_ttl_ms if config.cluster else 1500
        self._redis = redis
        self.log = WriteAheadLog(
            redis,
            LogKeys(config.key_prefix, dead),
            entry_ttl_s=config.wal.entry_ttl_s,
            clock=time.time,
        )
        self.entries: list[dict[str, Any]] = []
        self.keys: set[str] = set()  #: entities held until their messages moved
        self.moved = 0
        self.interrupted = 0

    async def prepare(self) -> bool:
        """Take the right and read the log; False if the member is alive again (or
        another node adopts it). Afterwards :attr:`keys` holds the entities to hold."""
        if not await self._store.adopt(self.dead, self.me, self._ttl_ms, HOLD_MS):
            return False
        await self.log.start()
        # From here its log starts nothing and takes nothing, should the node still be
        # running (paused, cut off): what is read below is all there is to move.
        await self.log.fence(self.me)
        self.entries = [
            e
            for e in await self.log.live_entries()
            if e.get("state") in (LogState.ENQUEUED, LogState.DISPATCHED)
        ]
        self.keys = {entity_key(e["entity_type"], e["entity_id"]) for e in self.entries}
        return True

    async def run(self, place: Callable[[str, int], str], release: Callable[[str], None]) -> None:
        """Interrupt what may have been running, move the rest; ``place(key, token)``
        decides an entity's new owner (returned) before its messages go, ``release(key)``
        lets petitions for it through once they have."""
        interrupted = await self._interrupt()
        queues: dict[str, list[dict[str, Any]]] = {}
        for entry in self.entries:  # log order
            if entry.get("state") == LogState.ENQUEUED:
                queues.setdefault(entity_key(entry["entity_type"], entry["entity_id"]), []).append(
                    entry
                )
        # A new owner, a new fencing token: larger than any the entity had before.
        placed = list(dict.fromkeys([*queues, *interrupted]))
        last = await self._store.next_tokens(max(len(placed), 1))
        tokens = {key: last - len(placed) + 1 + i for i, key in enumerate(placed)}
        owners = {key: place(key, tokens[key]) for key in placed}
        # The interrupted messages' ids become known at their entities' new owners before
        # anything may reach those: a resend under the same id is answered INTERRUPTED
        # there instead of running a message that may have started here.
        by_owner: dict[str, list[TombstoneEntry]] = {}
        for key, entries in interrupted.items():
            by_owner.setdefault(owners[key], []).extend(entries)
        for owner, entries in by_owner.items():
            await self._tombstones(owner, entries)
        for key in self.keys - queues.keys():
            release(key)
        while queues:
            if not await self._store.adopt(self.dead, self.me, self._ttl_ms, HOLD_MS):
                raise AdoptionFailed(f"lost the right to adopt {self.dead}'s log")
            heads = [(key, q[0]) for key, q in queues.items()]
            results = await self._send(
                [(entry, len(queues[key]) == 1, tokens[key]) for key, entry in heads]
            )
            landed = [
                entry["id"] for (_, entry), result in zip(heads, results, strict=True) if result.ok
            ]
            if landed:
                await self._hand_over(landed)
            failed = []
            for (key, entry), result in zip(heads, results, strict=True):
                if not result.ok:
                    failed.append(f"{entry['id']}: {(result.error or {}).get('message', '?')}")
                    continue
                queues[key].pop(0)
                if not queues[key]:
                    del queues[key]
                    release(key)
            if failed:
                raise AdoptionFailed(
                    f"{len(failed)} messages of {self.dead} could not move yet, e.g. {failed[0]}"
                )

    async def _tombstones(self, owner: str, entries: list[TombstoneEntry]) -> None:
        log_of_owner = WriteAheadLog(
            self._redis,
            LogKeys(self._config.key_prefix, owner),
            entry_ttl_s=self._config.wal.entry_ttl_s,
            clock=time.time,
        )
        try:
            await log_of_owner.tombstone(entries, self.dead)
        finally:
            await log_of_owner.close()

    async def _interrupt(self) -> dict[str, list[TombstoneEntry]]:
        """Interrupt the `dispatched` entries; what was dead-lettered, per entity key."""
        running = [e for e in self.entries if e.get("state") == LogState.DISPATCHED]
        found: dict[str, list[TombstoneEntry]] = {}
        if not running:
            return found
        entries = []
        for e in running:
            error = errors.Interrupted(
                f"node {self.dead} died while message {e['id']} may have been running; the "
                "system does not run it again (strictly once, fail if interrupted)"
            )
            entries.append(
                InterruptEntry(e["id"], self._retries(e), msgspec.msgpack.encode(error.to_dict()))
            )
        outcomes = await _committed(self.log.interrupt, entries)
        for e, entry, outcome in zip(running, entries, outcomes, strict=True):
            match outcome:
                case Applied(to=LogState.ENQUEUED):
                    e["state"] = LogState.ENQUEUED  # on_interrupt = "retry": it moves too
                case Applied():
                    e["state"] = LogState.INTERRUPTED
                    self.interrupted += 1
                    key = entity_key(e["entity_type"], e["entity_id"])
                    found.setdefault(key, []).append(
                        TombstoneEntry(
                            e["id"],
                            e["entity_type"],
                            e.get("message", ""),
                            e["entity_id"],
                            entry.error,
                        )
                    )
                    log.warning(
                        "%s %s of %s:%s was interrupted by the death of node %s and dead-lettered",
                        e.get("message"),
                        e["id"],
                        e.get("entity_type"),
                        e.get("entity_id"),
                        self.dead,
                    )
                case Refused(state) if state in _ENDED:
                    e["state"] = state  # it finished after all (before the fence): nothing to do
                case _:
                    raise AdoptionFailed(f"interrupting {e['id']} failed: {outcome}")
        return found

    def _retries(self, entry: dict[str, Any]) -> bool:
        etype = str(entry.get("entity_type", ""))
        if self._config.entity(etype).on_interrupt != "retry":
            return False
        limit = max(self._config.retry_for(etype).max_attempts, INTERRUPT_RETRY_FLOOR)
        return int(entry.get("attempts", 0)) < limit

    async def _send(self, entries: list[tuple[dict[str, Any], bool, int]]) -> list[SendResult]:
        """Each entry with whether it is its entity's last moved message, and its token."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[SendResult]] = []
        calls = []
        for e, last, token in entries:
            future: asyncio.Future[SendResult] = loop.create_future()
            futures.append(future)
            env = Envelope(
                e["entity_type"], e["message"], e["entity_id"], e["payload"], MSGPACK, e["id"]
            )
            calls.append(self._make_call(env, _setter(future), last, token))
        self._submit(calls)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), ROUND_TIMEOUT_S))
        except TimeoutError:
            raise AdoptionFailed("the new owners did not acknowledge in time") from None

    async def _hand_over(self, ids: list[str]) -> None:
        for mid, outcome in zip(ids, await self.log.hand_over(ids, self.me), strict=True):
            if isinstance(outcome, Applied):
                self.moved += 1
            elif getattr(outcome, "state", "") != LogState.MOVED:
                raise AdoptionFailed(f"marking {mid} moved failed: {outcome}")

    async def close(self, *, done: bool) -> None:
        if done:
            await self._store.adopted(self.dead, self.me)
        await self.log.close()


def _setter(future: asyncio.Future[SendResult]) -> Callable[[SendResult], None]:
    def reply(result: SendResult) -> None:
        if not future.done():
            future.set_result(result)

    return reply


async def _committed(
    transition: Callable[[list[Any], Callable[[list[Outcome]], None]], None], items: list[Any]
) -> list[Outcome]:
    future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()

    def done(outcomes: list[Outcome]) -> None:
        if not future.done():
            future.set_result(outcomes)

    transition(items, done)
    return await future
