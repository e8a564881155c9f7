"""A child process started with ``subprocess.Popen`` and awaited on the event loop.

Why not ``asyncio.create_subprocess_exec``: under uvloop it forks through libuv, a full
``fork()`` of a process whose gRPC threads may hold locks; a child that hung before its
``exec`` was seen here now and then. ``Popen`` uses ``vfork()`` + ``exec`` on Linux, with
no Python code in between. Its exit is watched with a pidfd (Linux 5.3+), else by a
thread blocked in ``waitpid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Sequence


class Child:
    def __init__(self, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> None:
        self._popen = subprocess.Popen(
            list(argv), pass_fds=tuple(pass_fds), stdin=subprocess.DEVNULL, close_fds=True
        )
        self.pid = self._popen.pid
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._loop.run_in_executor(None, self._wait_in_thread)
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _reap(self) -> None:
        code = self._popen.poll()
        if code is None:
            return
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        if not self._exit.done():
            self._exit.set_result(code)

    def _wait_in_thread(self) -> None:
        code = self._popen.wait()
        self._loop.call_soon_threadsafe(self._set_exit, code)

    def _set_exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        """The exit code once the child has exited (negative: the signal that killed it)."""
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()
