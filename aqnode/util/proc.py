"""Process plumbing shared by the supervisor and the shards."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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
GC_THRESHOLDS = (10_000, 10, 10)  #: gc.set_threshold for the node's processes (see tune_gc)


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

    tune_gc()
    return uvloop.run(main)


def tune_gc() -> None:
    """Fewer cyclic garbage collections, over fewer objects.

    Every message makes and drops a few dozen small objects (frames, structs, entries),
    almost all freed by reference counting; with CPython's default threshold (700
    allocations) the cyclic collector still ran every few dozen messages and, in its
    older generations, walked every object the process holds (a sixth of the
    supervisor's time under load). What is loaded by now (modules, gRPC, protobuf) is
    frozen out of its walks, and its first generation is collected every 10,000
    allocations. A handler's reference cycles are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
