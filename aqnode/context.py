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
