"""The master's assignment table: entity key -> the member that owns it.

Pure data, no I/O: the master resolves petitions through it and rebuilds it from every
member's list after a failover. A new entity goes to its existing owner, else to the
member the consistent-hash ring over live members names, else (that member's circuit
is open) to the least-loaded usable member. Every entity has one owner; two members
that both report one are a conflict that the table reports and does not hide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from aqnode.util.ring import MemberRing


class AssignmentTable:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch  #: the epoch whose master built it
        self.owners: dict[str, str] = {}  #: entity key -> server_id
        self.load: Counter[str] = Counter()  #: server_id -> entities it owns
        self.reported: set[str] = set()  #: members whose lists are in the table
        self._ring: MemberRing | None = None
        self._ring_members: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.owners)

    def record(self, server_id: str, keys: Iterable[str]) -> list[str]:
        """A member's own list. Returns the keys another member owns already (kept there)."""
        self.reported.add(server_id)
        conflicts = []
        for key in keys:
            owner = self.owners.get(key)
            if owner is None:
                self.owners[key] = server_id
                self.load[server_id] += 1
            elif owner != server_id:
                conflicts.append(key)
        return conflicts

    def forget_member(self, server_id: str) -> int:
        """A member is gone: its entities get new owners when next asked for."""
        gone = [k for k, owner in self.owners.items() if owner == server_id]
        for key in gone:
            del self.owners[key]
        self.load.pop(server_id, None)
        self.reported.discard(server_id)
        return len(gone)

    def resolve(self, key: str, live: list[str], usable: Callable[[str], bool]) -> str:
        """The owner of ``key``, assigning it if it has none. ``live`` is never empty
        (the master itself is live)."""
        owner = self.owners.get(key)
        if owner is not None and owner in live:
            return owner
        choice = self._ring_for(live).member_for(key)
        if not usable(choice):
            candidates = [m for m in live if usable(m)]
            if candidates:
                choice = min(candidates, key=lambda m: (self.load[m], m))
        if owner is not None:  # owned by a member that is gone
            self.load[owner] -= 1
        self.owners[key] = choice
        self.load[choice] += 1
        return choice

    def _ring_for(self, live: list[str]) -> MemberRing:
        members = tuple(sorted(live))
        if self._ring is None or members != self._ring_members:
            self._ring, self._ring_members = MemberRing(list(members)), members
        return self._ring
