"""The master's duties: answer petitions from the assignment table, and rebuild the
table when this node becomes master.

A new master knows nothing of where entities live until every live member has told it
(``ListWorkers``); until then it answers petitions with ``MASTER_REBUILDING`` rather
than guess, because a guess could give a second node an entity that one already runs.
A member that joins later (a new node, or one that restarted) is asked for its list
too, so an old master that comes back as a replica hands its entities over the same way;
until it has answered (it may still be starting) it is given no new entities.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aqnode import errors
from aqnode.cluster.adoption import Adoption, AdoptionFailed
from aqnode.cluster.assignment import AssignmentTable
from aqnode.cluster.membership import ClusterState
from aqnode.cluster.peers import Peers

log = logging.getLogger("aqnode.cluster")

REBUILD_RETRY_S = 0.1  #: a member that did not answer ListWorkers is asked again after


class MasterDuties:
    def __init__(
        self,
        server_id: str,
        state: Callable[[], ClusterState],
        peers: Peers,
        own_list: Callable[[], list[str]],
        new_adoption: Callable[[str], Adoption],
        placed: Callable[[str, str, int], None],
        steady: Callable[[], bool] = lambda: True,
        moved: Callable[[str], None] = lambda key: None,
    ) -> None:
        self.server_id = server_id
        self._state = state
        self._peers = peers
        self._own_list = own_list
        self._new_adoption = new_adoption
        self._placed = placed  # tells this node's router where an adopted entity went
        #: this node has held its own lease long enough to judge others dead: after a
        #: Redis outage every heartbeat is old, and nobody is adopted for that
        self._steady = steady
        self._moved = moved  # an adopted entity's messages are all with its new owner
        self.table: AssignmentTable | None = None  #: ready for petitions at its epoch
        self._building: asyncio.Task[None] | None = None
        self._building_epoch = 0
        self._pulling: set[str] = set()
        #: entities of a dead member whose messages are moving: petitions wait for them
        self.moving: dict[str, str] = {}
        self._adopting: dict[str, asyncio.Task[None]] = {}
        self._adopted: set[str] = set()  #: dead members whose logs moved (this mastership)
        self.rebuilds = 0
        self.adoptions = 0
        #: why this node stepped down from its master duties (its Redis health check
        #: fails: it could neither fence nor adopt), None while it serves them
        self.resigned: str | None = None

    def resign(self, reason: str) -> None:
        """Degraded mode: answer no petition and adopt nothing until :meth:`resume`. The
        group's record of the master stays (this node cannot write it now); if the outage
        outlasts node_ttl_ms the others elect a new master as for a dead one."""
        if self.resigned is None:
            log.warning("stepping down from master duties: %s", reason)
        self.resigned = reason

    def resume(self) -> None:
        if self.resigned is not None:
            log.info("Redis answers again: master duties resumed")
        self.resigned = None

    def on_view(self, state: ClusterState) -> None:
        """Start or stop being master; forget dead members; ask new ones for their lists."""
        if state.master != self.server_id:
            if self._building is not None:
                self._building.cancel()
                self._building = None
            for task in self._adopting.values():
                task.cancel()
            self.table = None
            self.moving.clear()
            self._adopted.clear()
            return
        table = self.table
        if table is None or table.epoch != state.epoch:
            if self._building is None or self._building_epoch != state.epoch:
                if self._building is not None:
                    self._building.cancel()
                self._building_epoch = state.epoch
                self._building = asyncio.get_running_loop().create_task(self._rebuild(state.epoch))
            return
        for member in state.members:
            sid = member.server_id
            if member.alive:
                self._adopted.discard(sid)  # a later death is adopted again
            elif (
                sid != self.server_id
                and sid not in self._adopted
                and sid not in self._adopting
                and self.resigned is None
                and self._steady()
            ):
                self._adopting[sid] = asyncio.get_running_loop().create_task(
                    self._adopt(sid, table)
                )
        for member in state.members:
            sid = member.server_id
            if member.alive and sid not in table.reported and sid not in self._pulling:
                self._pulling.add(sid)
                asyncio.get_running_loop().create_task(self._pull(table, sid, member.address))

    def answer(self, epoch: int, keys: list[str]) -> list[tuple[str, str]]:
        """Each key's owner (assigning new ones), for a petition sent at ``epoch``."""
        state = self._state()
        if state.master != self.server_id or epoch != state.epoch:
            raise errors.StaleEpoch(
                f"{self.server_id} is not the master at epoch {epoch} (it sees master "
                f"{state.master or '(none)'} at epoch {state.epoch}); ask that one"
            )
        if self.resigned is not None:
            raise errors.Unavailable(
                f"{self.server_id}, the master, stepped down until its Redis answers again "
                f"({self.resigned}); retry shortly"
            )
        table = self.table
        if table is None or table.epoch != epoch:
            raise errors.MasterRebuilding(
                f"{self.server_id} became master at epoch {epoch} and is rebuilding its "
                "assignment table from the members' lists; retry shortly"
            )
        # Only members that have given their lists take new entities: one that is still
        # starting (in the group, not yet serving) gets them once it answers.
        live = [m.server_id for m in state.members if m.alive and m.server_id in table.reported]
        if self.server_id not in live:
            live.append(self.server_id)

        alive = {m.server_id for m in state.members if m.alive}
        for key in keys:
            owner = table.owners.get(key)
            if key in self.moving or (owner is not None and owner not in alive):
                raise errors.MasterRebuilding(
                    f"{key} lived on node {self.moving.get(key) or owner}, which died; its "
                    "queued messages are moving to a new owner first; retry shortly"
                )
        return [(key, table.resolve(key, live, self._usable)) for key in keys]

    def _usable(self, sid: str) -> bool:
        return sid == self.server_id or self._peers.usable(sid)

    async def _rebuild(self, epoch: int) -> None:
        table = AssignmentTable(epoch)
        self._note_conflicts(self.server_id, table.record(self.server_id, self._own_list()))
        asked = 0
        while True:
            state = self._state()
            if state.epoch != epoch or state.master != self.server_id:
                return  # superseded; on_view starts the next one
            pending = [
                m
                for m in state.members
                if m.alive and m.server_id != self.server_id and m.server_id not in table.reported
            ]
            if not pending:
                break
            asked += len(pending)
            results = await asyncio.gather(
                *(
                    self._peers.get(m.server_id, m.address).list_workers(epoch, self.server_id)
                    for m in pending
                ),
                return_exceptions=True,
            )
            for member, result in zip(pending, results, strict=True):
                if isinstance(result, list):
                    self._note_conflicts(member.server_id, table.record(member.server_id, result))
                elif isinstance(result, errors.AqError):
                    log.info(
                        "rebuild: %s did not list its workers yet (%s)", member.server_id, result
                    )
                elif isinstance(result, BaseException):
                    log.error("rebuild: asking %s failed: %r", member.server_id, result)
            if any(m.server_id not in table.reported for m in pending):
                await asyncio.sleep(REBUILD_RETRY_S)
        # The dead members' queued messages go first: their entities are held before
        # the table answers anyone, so no new call can overtake them.
        while not self._steady() and any(
            not m.alive and m.server_id != self.server_id for m in self._state().members
        ):  # just back from an outage: the silent may be renewing, not dead
            await asyncio.sleep(REBUILD_RETRY_S)
        for member in self._state().members:
            sid = member.server_id
            if member.alive or sid == self.server_id or sid in self._adopting:
                continue
            adoption = self._new_adoption(sid)
            while True:
                try:
                    prepared = await adoption.prepare()
                    break
                except errors.AqError as exc:
                    log.warning("reading dead member %s's log failed (%s); again", sid, exc)
                    await asyncio.sleep(REBUILD_RETRY_S)
            if prepared:
                self._hold(adoption, table)
                self._adopting[sid] = asyncio.get_running_loop().create_task(
                    self._adopt(sid, table, adoption)
                )
            else:
                await adoption.close(done=False)
        self.table = table
        self.rebuilds += 1
        log.info(
            "master at epoch %d: assignment table rebuilt, %d entities from %d members",
            epoch,
            len(table),
            len(table.reported),
        )

    def _hold(self, adoption: Adoption, table: AssignmentTable) -> None:
        for key in adoption.keys:
            self.moving[key] = adoption.dead
        gone = table.forget_member(adoption.dead)
        log.info(
            "%s is dead: %d entities get new owners, %d of them after their queued messages moved",
            adoption.dead,
            max(gone, len(adoption.keys)),
            len(adoption.keys),
        )

    async def _adopt(
        self, sid: str, table: AssignmentTable, adoption: Adoption | None = None
    ) -> None:
        """Move dead member ``sid``'s log (see adoption.py); on failure the next view
        tries again, its entities held meanwhile."""
        done = False
        if adoption is None:
            adoption = self._new_adoption(sid)
            try:
                if not await adoption.prepare():
                    await adoption.close(done=False)
                    self._adopting.pop(sid, None)
                    return
            except errors.AqError as exc:
                log.warning("reading dead member %s's log failed (%s); will try again", sid, exc)
                await adoption.close(done=False)
                self._adopting.pop(sid, None)
                return
            self._hold(adoption, table)
        try:
            await adoption.run(lambda key, token: self._place(key, token, table), self._release)
            done = True
            self._adopted.add(sid)
            self.adoptions += 1
            if adoption.entries:
                log.info(
                    "adopted %s's log: %d messages moved to their new owners, %d interrupted",
                    sid,
                    adoption.moved,
                    adoption.interrupted,
                )
        except (errors.AqError, AdoptionFailed) as exc:
            log.warning("adopting %s's log failed (%s); will try again", sid, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("adopting %s's log failed; will try again", sid)
        finally:
            try:
                await adoption.close(done=done)
            except errors.AqError as exc:
                log.warning("releasing the adoption of %s failed (%s)", sid, exc)
            self._adopting.pop(sid, None)

    def _release(self, key: str) -> None:
        self.moving.pop(key, None)
        self._moved(key)

    def _place(self, key: str, token: int, table: AssignmentTable) -> str:
        """Give ``key`` its new owner (with ``token``); the owner's server id."""
        state = self._state()
        live = [m.server_id for m in state.members if m.alive and m.server_id in table.reported]
        if self.server_id not in live:
            live.append(self.server_id)
        owner = table.resolve(key, live, self._usable)
        self._placed(key, owner, token)
        return owner

    async def _pull(self, table: AssignmentTable, sid: str, address: str) -> None:
        try:
            keys = await self._peers.get(sid, address).list_workers(table.epoch, self.server_id)
            if self.table is table:
                self._note_conflicts(sid, table.record(sid, keys))
                log.info("member %s is placed entities from now on (it owns %d)", sid, len(keys))
        except errors.AqError as exc:  # still starting, most likely: asked again next view
            log.debug("asking new member %s for its workers failed (%s)", sid, exc)
        finally:
            self._pulling.discard(sid)

    def _note_conflicts(self, sid: str, conflicts: list[str]) -> None:
        if conflicts:
            log.error(
                "%s reports %d entities another member owns already (kept there), e.g. %s",
                sid,
                len(conflicts),
                conflicts[:3],
            )

    async def close(self) -> None:
        if self._building is not None:
            self._building.cancel()
        tasks = list(self._adopting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
