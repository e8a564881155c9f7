"""The message ids a node makes up for sends without an idempotency key.

An id is ``<boot>-<counter>-<random>``: unique per node start by its counter, and not
guessable by its 48 random bits. Guessable ids (``<boot>-<counter>``, as before) let a
client take the next one as its own idempotency key; the node's next message then
found that id known and was answered as that client's message, never run.
"""

from __future__ import annotations

import itertools
import os
import secrets

_RANDOM_BYTES = 6  #: per id: 48 bits
_POOL_IDS = 512  #: ids per read of the system's random source


class MessageIds:
    """Fresh ids, one :meth:`next` each; the random part comes from ``os.urandom``,
    read a pool at a time (one system call per 512 ids, not per id)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(5)
        self._counter = itertools.count(1)
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(_RANDOM_BYTES * _POOL_IDS), 0
        self._at = at + _RANDOM_BYTES
        return f"{self.prefix}-{next(self._counter):x}-{self._pool[at : at + _RANDOM_BYTES].hex()}"
