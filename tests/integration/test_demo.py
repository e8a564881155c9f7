"""The README's first set-up command, `scripts/demo`, end to end: a node on the bank
example with its own embedded Redis, a short workload, correct balances, a clean stop."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.redis_fixture import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_scripts_demo_runs_a_node_and_prints_right_balances() -> None:
    env = dict(os.environ, AQNODE_DEMO_PORT=str(free_port()), AQNODE_SKIP_SETUP="1")
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--accounts", "3", "--deposits", "300"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every balance is right" in result.stdout
    assert "stopping the node" in result.stdout + result.stderr
