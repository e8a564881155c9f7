"""This node as a member of its service group: membership, placement and the master's
duties together, behind the two things the rest of the supervisor needs: "may this call
be logged here?" (:meth:`GroupMember.take`) and the peer API's answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.cluster.adoption import Adoption
from aqnode.cluster.master import MasterDuties
from aqnode.cluster.membership import ClusterState, Membership
from aqnode.cluster.peers import Peers
from aqnode.cluster.router import Router
from aqnode.config import NodeConfig

if TYPE_CHECKING:
    from aqnode.supervisor.live import Call

log = logging.getLogger("aqnode.cluster")


class GroupMember:
    def __init__(
        self,
        membership: Membership,
        config: NodeConfig,
        redis: Any,
        submit: Callable[[list[Call]], None],
        make_call: Callable[[Envelope, Callable[[SendResult], None], bool, int], Call],
        reply_timeout_ms: Callable[[str], int],
        peer_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.membership = membership
        self.server_id = membership.server_id
        self.peers = Peers(membership.config, config.auth_token, peer_credentials)
        self.router = Router(
            self.server_id,
            membership.config,
            self.state,
            self.peers,
            self._ask_master,
            submit,
            reply_timeout_ms,
            membership.store.next_tokens,
        )

        def new_adoption(dead: str) -> Adoption:
            return Adoption(
                dead, self.server_id, membership.store, redis, config, submit, make_call
            )

        self.master = MasterDuties(
            self.server_id,
            self.state,
            self.peers,
            self.router.report,
            new_adoption,
            self.router.placed,
            self._steady,
            self.router.adoption_done,
        )
        self._epoch = membership.state.epoch
        membership.on_view = self._on_view

    def _steady(self) -> bool:
        """Held its own lease for node_ttl_ms + a heartbeat: any member still silent by
        now is dead, not a victim of the same outage."""
        cfg = self.membership.config
        return self.membership.steady_for() >= (cfg.node_ttl_ms + cfg.heartbeat_ms) / 1000

    def state(self) -> ClusterState:
        return self.membership.state

    def take(self, call: Call, key: str) -> bool:
        return self.router.take(call, key)

    def token(self, key: str) -> int:
        return self.router.token(key)

    def redis_health(self, problem: str | None) -> None:
        """The node's Redis health check: a failing one (``problem``) puts the member in
        degraded mode (the node already refuses new work; here it resigns its master
        duties), a passing one (None) ends it."""
        if problem is None:
            self.master.resume()
        else:
            self.master.resign(problem)

    def start(self) -> None:
        """Begin acting on views (after the log's recovery claimed this node's entities)."""
        self._on_view(self.membership.state)

    def _on_view(self, state: ClusterState) -> None:
        changed = state.epoch != self._epoch
        self._epoch = state.epoch
        self.router.on_view(state, changed)
        self.master.on_view(state)

    async def _ask_master(self, epoch: int, keys: list[str]) -> list[tuple[str, str]]:
        state = self.state()
        if state.master == self.server_id:
            return self.master.answer(epoch, keys)
        member = next((m for m in state.members if m.server_id == state.master), None)
        if member is None or not member.alive:
            raise errors.Unavailable(
                f"the group has no live master yet (last known: {state.master or 'none'})"
            )
        homes = await self.peers.get(member.server_id, member.address).petition(
            epoch, self.server_id, keys
        )
        return [(h.entity_key, h.server_id) for h in homes]

    # ---- the peer API (see supervisor/peer_api.py) ------------------------------------

    def petition(self, epoch: int, keys: list[str]) -> tuple[int, list[tuple[str, str, str]]]:
        """(epoch, [(key, owner, owner's address)]) for a peer's petition."""
        answers = self.master.answer(epoch, keys)
        addresses = {m.server_id: m.address for m in self.state().members}
        return epoch, [(k, sid, addresses.get(sid, "")) for k, sid in answers]

    async def list_workers(self, epoch: int, asker: str) -> tuple[int, list[str]]:
        """What this node owns, for the master of ``epoch`` (rebuilding its table)."""
        if epoch > self.state().epoch:
            await self.membership.refresh()  # the asker saw the new master first
        state = self.state()
        if epoch != state.epoch or asker != state.master:
            raise errors.StaleEpoch(
                f"{self.server_id} sees master {state.master or '(none)'} at epoch "
                f"{state.epoch}, not {asker} at epoch {epoch}"
            )
        return epoch, self.router.report()

    async def close(self) -> None:
        await self.router.close()
        await self.master.close()
        await self.peers.close()
