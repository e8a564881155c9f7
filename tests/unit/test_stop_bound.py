"""The stop's bound: a stop step that never ends becomes an exit that names the step, what
each task waits for, and ends the shards; it fires with the event loop blocked too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from aqnode.util import proc as procutil
from tests.node_fixture import gone
from tests.redis_fixture import wait_for

PROGRAM = textwrap.dedent(
    """
    import asyncio, logging, subprocess, sys, time
    from aqnode.supervisor.stop_bound import StopBound

    logging.basicConfig(stream=sys.stderr)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(child.pid, flush=True)

    async def never_ends() -> None:
        await asyncio.Event().wait()

    async def main(blocked: bool) -> None:
        loop = asyncio.get_running_loop()
        bound = StopBound(0.3, loop, lambda: [child.pid])
        bound.start()
        bound.at("leaving the group")
        if blocked:
            time.sleep(60)  # the loop itself is stuck
        await asyncio.create_task(never_ends(), name="stuck-step")

    asyncio.run(main(sys.argv[1] == "blocked"))
    """
)


@pytest.mark.parametrize("how", ["awaiting", "blocked"])
def test_a_stop_that_hangs_exits_naming_its_step(how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    text = err.decode()
    assert proc.returncode == procutil.EXIT_HALTED, text
    assert "stopping has taken over 0.3 s and is still leaving the group" in text
    if how == "awaiting":
        assert "stuck-step" in text and "never_ends" in text  # what the task waits for
    else:
        assert " in main" in text  # the blocked thread's stack, where it is stuck
    child = int(out.split()[0])
    wait_for(lambda: gone(child), timeout=10)  # the shard stand-in was killed


def test_a_stop_within_its_bound_is_left_alone() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from aqnode.supervisor.stop_bound import StopBound

        async def main() -> None:
            bound = StopBound(0.2, asyncio.get_running_loop(), lambda: [])
            bound.start()
            await asyncio.sleep(0.05)
            bound.cancel()
            await asyncio.sleep(0.4)  # past the bound: cancelled, nothing fires

        asyncio.run(main())
        print("done")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "done"
