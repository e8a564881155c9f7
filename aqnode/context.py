"""What a handler gets besides its message: ``ctx`` (SPEC section 3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aqnode.bus import Bus


@dataclass(frozen=True, slots=True)
class Context:
    """The running message's identity, a logger, and ``bus`` for other entities."""

    entity_type: str
    entity_id: str
    message_id: str
    attempt: int
    enqueued_at: float
    logger: logging.Logger | logging.LoggerAdapter[Any]
    bus: Bus
    #: cluster mode: an integer that grows every time the entity changes owner (0 on a
    #: standalone node); a handler that writes elsewhere can refuse writes stamped with a
    #: smaller token than the last it saw, which fences out a former owner's late writes
    fencing_token: int = 0
