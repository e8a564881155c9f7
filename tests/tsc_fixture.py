"""The TypeScript compiler for the tests of ``aqnode generate --ts``.

Installed once with npm into ``~/.cache/aqnode-tsc`` (outside the repository; override
with ``$AQNODE_TSC_CACHE``); a test that needs it is skipped, saying why, where npm is
missing or the install fails (no network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TYPESCRIPT = "typescript@5"


def tsc() -> Path:
    """The path of ``tsc``, installed if needed; skips the calling test if it cannot be."""
    cache = Path(os.environ.get("AQNODE_TSC_CACHE", Path.home() / ".cache" / "aqnode-tsc"))
    binary = cache / "node_modules" / ".bin" / "tsc"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("npm and node are not installed: cannot check the TypeScript with tsc")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", TYPESCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 or not binary.exists():
        pytest.skip(f"npm could not install {TYPESCRIPT}: {done.stderr.strip()[-300:]}")
    return binary


def check_strict(tsc_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    """``tsc --strict --noEmit`` over ``files``."""
    return subprocess.run(
        [str(tsc_path), "--strict", "--noEmit", "--target", "es2020", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
