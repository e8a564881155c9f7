"""Process plumbing shared by the supervisor and the shards."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Exit codes of ``aqnode serve`` (README, "Exit codes").
EXIT_OK = 0  #: stopped by SIGTERM/SIGINT after draining
EXIT_HALTED = 1  #: it was serving and stopped itself (a shard could not be restarted)
EXIT_CANNOT_START = 2  #: config, handlers, port, data_dir or Redis: nothing was served

#: Exit codes that tell the supervisor not to restart a shard (gunicorn's idea).
EXIT_BOOT_ERROR = 3  #: the shard could not start (bad handshake, bad config)
EXIT_IMPORT_ERROR = 4  #: the handler modules failed to import in the shard
EXIT_PARENT_GONE = 5  #: the supervisor died; the shard left with it

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel signal us when our parent dies (Linux), and check it has not already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(EXIT_PARENT_GONE)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (the loop every aqnode process uses)."""
    import uvloop

    return uvloop.run(main)
