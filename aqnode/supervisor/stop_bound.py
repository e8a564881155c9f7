"""A bound on how long a stop may take.

A stopping node waits for its handlers (``drain_timeout_ms``) and then for a few bounded
steps (the log's last commits, leaving the group, closing servers). Should one of them
wait for ever all the same (a bug, a peer that never lets go), the node would hang until
something outside killed it, with no word of why. The bound turns that into an exit: it
logs the step it was at and what every task was waiting for, kills the shards (what they
still run is interrupted, and dead-lettered at the next start: fail if interrupted) and
exits with :data:`~aqnode.util.proc.EXIT_HALTED`.

It runs on a thread of its own, so that it fires even when the event loop is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from aqnode.util import proc as procutil

log = logging.getLogger("aqnode.supervisor")

#: seconds a stop may take beyond ``drain_timeout_ms`` (the steps after the drain are each
#: bounded by a few seconds; this is many times their sum)
STOP_OVERRUN_S = 30.0


class StopBound:
    """Started when a stop begins; :meth:`at` names each step as it is entered."""

    def __init__(
        self,
        limit_s: float,
        loop: asyncio.AbstractEventLoop,
        shard_pids: Callable[[], list[int]],
    ) -> None:
        self.limit_s = limit_s
        self.step = "starting to stop"
        self._loop = loop
        self._shard_pids = shard_pids
        self._timer = threading.Timer(limit_s, self._overran)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def at(self, step: str) -> None:
        self.step = step

    def cancel(self) -> None:
        self._timer.cancel()

    def _overran(self) -> None:
        """On the timer's thread: say where the stop hangs, end the shards, exit."""
        try:
            log.error(
                "stopping has taken over %g s and is still %s; exiting now (what still runs "
                "is interrupted and dead-lettered at the next start). What each task waits "
                "for:\n%s",
                self.limit_s,
                self.step,
                _tasks_report(self._loop),
            )
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            for pid in self._shard_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for handler in logging.getLogger().handlers:
                handler.flush()
        finally:
            os._exit(procutil.EXIT_HALTED)


def _tasks_report(loop: asyncio.AbstractEventLoop) -> str:
    """Each pending task and the frames it is suspended in (read from another thread:
    best effort, for a person reading the log)."""
    lines: list[str] = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except Exception as exc:  # the loop's task set changed under us
        return f"  (the tasks could not be listed: {exc!r})"
    for task in tasks:
        try:
            # Frames by hand: print_stack raised TypeError on frames with no line number.
            frames = [
                f"    {f.f_code.co_filename}:{f.f_lineno or '?'} in {f.f_code.co_name}"
                for f in task.get_stack()
            ]
            lines.append(f"  {task!r}\n" + "\n".join(frames))
        except Exception as exc:
            lines.append(f"  {task.get_name()}: (its stack could not be read: {exc!r})")
    return "\n".join(lines) or "  (no tasks)"
