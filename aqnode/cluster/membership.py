"""Membership of a service group: heartbeats, the master every member computes, epochs.

Liveness is decided in Redis, in Redis time: a member is alive while its last heartbeat
is younger than ``node_ttl_ms``. Every member reads the same view and computes the
master as the live member with the lowest ``server_id`` (plain string order): no lock,
no vote. When the computed master differs from the recorded one for
``leader_debounce_ms``, the member records it through ``group_claim.lua``, which takes a
new epoch atomically (the first caller for a change bumps it; the others find it done).
Roles and the epoch shown are the recorded ones, so all members report the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aqnode import errors
from aqnode.config import ClusterConfig
from aqnode.wal.group import BeingAdopted, Fenced, GroupStore, GroupView, Taken

log = logging.getLogger("aqnode.cluster")

ADOPTION_WAIT_S = 60.0  #: seconds a starting node waits for the adoption of its log to end


@dataclass(frozen=True, slots=True)
class MemberStatus:
    server_id: str
    address: str
    alive: bool
    role: str  #: "master" or "replica"


@dataclass(slots=True)
class ClusterState:
    """What this member knows of its group, as of its last view."""

    master: str = ""
    epoch: int = 0
    members: list[MemberStatus] = field(default_factory=list)
    viewed_at: float = 0.0  #: time.monotonic() of the last view that Redis answered

    def role_of(self, server_id: str) -> str:
        return "master" if server_id == self.master else "replica"


class Membership:
    def __init__(
        self,
        store: GroupStore,
        config: ClusterConfig,
        server_id: str,
        address: str,
        lost: Callable[[str], None],
    ) -> None:
        self.store = store
        self._lost = lost  # called when another process took this server id: stop now
        self.config = config
        self.server_id = server_id
        self.address = address
        self.token = secrets.token_hex(8)  # this process; a restart is another holder
        self.state = ClusterState()
        self._candidate = ""  # the master computed from the last views
        self._candidate_since = 0.0
        #: called after every view that Redis answered (placement follows the group)
        self.on_view: Callable[[ClusterState], None] | None = None
        #: called (instead of ``lost``) when the group declared this node dead
        self.declared_dead: Callable[[str], None] | None = None
        #: self-fencing: called when this node's lease is about to run out unrenewed (it
        #: must start no handler and end the ones running), and when it is renewed again
        self.lease_lost: Callable[[], None] | None = None
        self.lease_back: Callable[[], None] | None = None
        self.lapsed = False
        #: called with the lease's end in time.monotonic() at every renewal (the shards
        #: start no handler past it)
        self.lease_renewed: Callable[[float], None] | None = None
        self.lease_until_mono = 0.0
        self._lease_timer: asyncio.TimerHandle | None = None
        self._steady_since = 0.0  # loop time the lease was last (re)gained

    @property
    def role(self) -> str:
        return self.state.role_of(self.server_id)

    async def join(self) -> None:
        """Become a member, before the node touches its log. A previous process of this
        server id that died is waited out (its heartbeat expires within node_ttl_ms); a
        live one is a start-up error."""
        ttl = self.config.node_ttl_ms
        deadline = time.monotonic() + (ttl + 2 * self.config.heartbeat_ms) / 1000
        adoption_deadline = time.monotonic() + ADOPTION_WAIT_S
        said = False
        while True:
            result = await self._heartbeat()
            if isinstance(result, BeingAdopted):
                # Declared dead: another node moves this node's messages to their new
                # owners; rejoining now could run them twice.
                if time.monotonic() > adoption_deadline:
                    raise errors.StartupError(
                        f"node {result.adopter} has been moving this node's messages (it "
                        f"was declared dead) for over {ADOPTION_WAIT_S:.0f} s; try again later"
                    )
                if not said:
                    log.warning(
                        "this node was declared dead and %s is moving its messages to their "
                        "new owners; waiting for that to finish",
                        result.adopter,
                    )
                    said = True
                await asyncio.sleep(self.config.heartbeat_ms / 1000)
                continue
            if isinstance(result, Fenced):  # not for a new token; said for completeness
                raise errors.StartupError(
                    f"this node was declared dead and {result.adopter} adopted its log; "
                    "start it again"
                )
            if not isinstance(result, Taken):
                break
            if time.monotonic() > deadline:
                holder = result.holder
                raise errors.StartupError(
                    f"server_id {self.server_id!r} is in use by a live node of service group "
                    f"{self.store.keys.group!r} (at {holder.address or '?'}, pid "
                    f"{holder.pid or '?'}; its heartbeat is {result.age_ms} ms old); give this "
                    "node another server_id"
                )
            if not said:
                log.warning(
                    "server_id %s is held by another process (heartbeat %d ms old); waiting "
                    "up to node_ttl_ms for it to expire",
                    self.server_id,
                    result.age_ms,
                )
                said = True
            await asyncio.sleep(self.config.heartbeat_ms / 1000)
        await self.refresh()
        log.info(
            "joined service group %r as %s: master %s, epoch %d",
            self.store.keys.group,
            self.role,
            self.state.master or "(none yet)",
            self.state.epoch,
        )

    async def run(self) -> None:
        """Heartbeat and elect every heartbeat_ms until cancelled; Redis failures are
        logged and retried (they never end the loop)."""
        while True:
            await asyncio.sleep(self.config.heartbeat_ms / 1000)
            try:
                result = await self._heartbeat()
                if isinstance(result, BeingAdopted | Fenced):
                    # The group gave this node up (it could not renew in time) and its
                    # entities are moving or have moved: it must run nothing more.
                    (self.declared_dead or self._lost)(
                        f"the group declared this node dead (its membership lapsed) and "
                        f"{result.adopter} moved its messages to other nodes; stopping "
                        "(restart it to rejoin)"
                    )
                    return
                if isinstance(result, Taken):
                    # Another process holds this id (and so this node's log): two writers
                    # of one log could run a message twice. This one stops, saying why.
                    self._lost(
                        f"another process took server_id {self.server_id!r} (at "
                        f"{result.holder.address or '?'}, pid {result.holder.pid or '?'}) "
                        "while this node could not renew its membership; stopping"
                    )
                    return
                await self.refresh()
            except errors.RedisUnavailable as exc:
                log.warning("cluster heartbeat failed (%s); trying again", exc.message)
            except Exception:  # a bug must not silently end the membership (a dead node)
                log.exception("cluster heartbeat failed; trying again")

    async def refresh(self) -> None:
        """Read the group, record a new master if it is due, update the state."""
        view = await self.store.view()
        epoch, master = view.epoch, view.master
        computed = self._computed_master(view)
        settled = self._settled(computed)
        # A group with no master yet takes one at once; a change waits out the debounce.
        if computed and computed != master and (settled or not master):
            epoch, master = await self.store.claim(computed, view.epoch)
        if master != self.state.master:
            log.info("master of %r: %s (epoch %d)", self.store.keys.group, master, epoch)
        self.state.epoch, self.state.master = epoch, master
        self.state.members = self._members(view, master)
        self.state.viewed_at = time.monotonic()
        if self.on_view is not None:
            self.on_view(self.state)

    async def leave(self) -> None:
        """Leave the group at once (a stopping node), so that others need not wait."""
        try:
            await self.store.leave(self.server_id, self.token, self.config.node_ttl_ms)
        except errors.RedisUnavailable as exc:
            log.warning("could not leave the group (%s); it expires by itself", exc.message)

    async def _heartbeat(self) -> int | Taken | BeingAdopted | Fenced:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()  # the lease runs from before the renewal was sent
        sent_mono = time.monotonic()
        result = await self.store.heartbeat(
            self.server_id, self.token, self.address, os.getpid(), self.config.node_ttl_ms
        )
        if isinstance(result, int):
            self._renewed(sent_at)
            self.lease_until_mono = sent_mono + self._lease_s
            if self.lease_renewed is not None:
                self.lease_renewed(self.lease_until_mono)
        return result

    @property
    def _lease_s(self) -> float:
        return (self.config.node_ttl_ms - self.fence_margin_ms) / 1000

    # ---- the lease (self-fencing) -----------------------------------------------------

    @property
    def fence_margin_ms(self) -> float:
        """How long before the lease could expire in Redis this node stops its handlers:
        the others may declare it dead at ``node_ttl_ms`` after its last renewal arrived,
        which is later than it was sent."""
        return min(self.config.heartbeat_ms, self.config.node_ttl_ms / 4)

    def steady_for(self) -> float:
        """Seconds this node has held its lease without a lapse (0 while lapsed)."""
        if self.lapsed or not self._steady_since:
            return 0.0
        return asyncio.get_running_loop().time() - self._steady_since

    def _renewed(self, sent_at: float) -> None:
        loop = asyncio.get_running_loop()
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        ends = sent_at + self._lease_s
        self._lease_timer = loop.call_at(ends, self._lapse)
        if self.lapsed or not self._steady_since:
            self._steady_since = loop.time()
        if self.lapsed:
            self.lapsed = False
            log.warning("membership renewed again: handlers may start again")
            if self.lease_back is not None:
                self.lease_back()

    def _lapse(self) -> None:
        self._lease_timer = None
        if self.lapsed:
            return
        self.lapsed = True
        log.warning(
            "this node could not renew its membership for %d ms (Redis unreachable, or the "
            "node was paused): it starts no handler and ends the running ones before the "
            "group may declare it dead",
            self.config.node_ttl_ms - self.fence_margin_ms,
        )
        if self.lease_lost is not None:
            self.lease_lost()

    def stop_lease(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None

    def _computed_master(self, view: GroupView) -> str:
        alive = sorted(m.server_id for m in view.alive(self.config.node_ttl_ms))
        return alive[0] if alive else ""

    def _settled(self, computed: str) -> bool:
        """The same master has been computed for leader_debounce_ms."""
        now = time.monotonic()
        if computed != self._candidate:
            self._candidate, self._candidate_since = computed, now
        return now - self._candidate_since >= self.config.leader_debounce_ms / 1000

    def _members(self, view: GroupView, master: str) -> list[MemberStatus]:
        ttl = self.config.node_ttl_ms
        return [
            MemberStatus(
                m.server_id,
                m.address,
                view.now_ms - m.last_heartbeat_ms < ttl,
                "master" if m.server_id == master else "replica",
            )
            for m in sorted(view.members, key=lambda m: m.server_id)
        ]
