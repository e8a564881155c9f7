"""The running event loop, remembered by an object that needs it for every message.

In CPython 3.11, ``asyncio.get_running_loop()`` (and ``asyncio.current_task()`` without
a loop) makes a ``getpid()`` system call each time, to notice a fork; on a small VM that
is a few microseconds, once or twice per message on the hot paths. An object that lives
on one loop keeps a :class:`LoopRef` and asks it instead.
"""

from __future__ import annotations

import asyncio


class LoopRef:
    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop (asked once; again only after that loop was closed)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop
