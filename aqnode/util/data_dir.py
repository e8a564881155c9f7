"""A node's data_dir: made if missing, and held by one node at a time.

The hold is an ``flock`` on ``<data_dir>/node.lock``, which the kernel drops when the
process ends in any way, so a node killed with SIGKILL never blocks its own restart.
The file names the holder's pid for the message of the node that is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from aqnode import errors

LOCK_NAME = "node.lock"


def hold_data_dir(data_dir: Path) -> IO[bytes]:
    """Make ``data_dir`` and lock it for this process (keep the returned file open for
    as long as the node runs). StartupError, one line, if it cannot be made or written,
    or if another node holds it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = (data_dir / LOCK_NAME).open("a+b")
    except OSError as exc:
        raise errors.StartupError(
            f"data_dir {data_dir} cannot be used: {exc.strerror or exc}; choose a directory "
            "this user can create and write (`data_dir` in the config)"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().decode("ascii", "replace").strip() or "?"
        lock.close()
        raise errors.StartupError(
            f"data_dir {data_dir} is in use by another node (pid {holder}); two nodes must "
            "not share a data_dir: stop that one, or give this one its own `data_dir`"
        ) from None
    except OSError as exc:
        lock.close()
        raise errors.StartupError(f"data_dir {data_dir} cannot be locked: {exc}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n".encode())
    lock.flush()
    return lock
