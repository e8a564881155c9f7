"""The one question the message flow asks about clusters: may this call be logged here?

Standalone, always. In cluster mode :class:`~aqnode.cluster.member.GroupMember` answers:
yes for an entity this node owns; otherwise it takes the call (forwarding it to the
owner, or holding it until the master says where the entity lives).
"""

from __future__ import annotations

from typing import Protocol

from aqnode.supervisor.live import Call


class Placement(Protocol):
    def take(self, call: Call, key: str) -> bool:
        """True: log ``call`` on this node. False: placement took it. Raises an AqError
        for a call that must be refused (a stale epoch, too many hops)."""
        ...

    def token(self, key: str) -> int:
        """The entity's fencing token here (ctx.fencing_token)."""
        ...


class Standalone:
    """One node: every entity lives here."""

    def take(self, call: Call, key: str) -> bool:
        return True

    def token(self, key: str) -> int:
        return 0  # an entity never changes owner


STANDALONE = Standalone()  #: the one instance (the core skips placement when it has it)
