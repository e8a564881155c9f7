"""Review: a SIGTERM that arrives while the shards are still starting is swallowed.

`Supervisor._wait_first_shards` returns on *any* event from `_events` (its comment: "a
signal or a fatal error during start") but drops it; `run` then checks only `fatal`, so
after a SIGTERM it starts gRPC, logs "ready" and waits in `_main_loop` for a *second*
signal. Fails on cde5013: the node is still running 20 s after the SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.node_fixture import kill_group, spawn, write_config
from tests.redis_fixture import free_port

SLOW = """
import time
import msgspec
from aqnode import Command, entity_type, handles

time.sleep(4)  # a handler module that takes a while to import


@entity_type("slow", id_field="slow_id")
class Ping(Command[None]):
    slow_id: str


@handles(Ping)
async def ping(msg: Ping) -> None:
    return None
"""


def test_review_sigterm_while_shards_start_stops_the_node(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "slow_handlers.py").write_text(SLOW)
    config = write_config(
        tmp_path / "node.toml", redis_url, free_port(), handlers=["slow_handlers"], shards=1
    )
    proc, log_path = spawn(config, redis_url, {"PYTHONPATH": str(tmp_path)})
    children: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the shard process exists: signals are installed
            children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            if any("aqnode.shard" in " ".join(psutil.Process(c).cmdline()) for c in children):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no shard was started:\n" + log_path.read_text())
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "the node ignored a SIGTERM sent while its shards started:\n" + log_path.read_text()
            ) from None
        assert code == 0, log_path.read_text()
    finally:
        kill_group(proc, children)
