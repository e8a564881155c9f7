"""The package's layering, held by walking every module's imports with ``ast``.

One package per process role: the shard never reaches Redis, gRPC or the supervisor;
only ``wal/`` talks to Redis; the client is the shared modules plus the gRPC stubs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "aqnode"


def _modules() -> dict[str, set[str]]:
    """Module name -> every module it imports (absolute names, lazy imports included)."""
    found: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name.startswith("aqnode.v1"):
            continue
        imports: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports.add(node.module)
                imports.update(f"{node.module}.{a.name}" for a in node.names)
        found[name] = imports
    return found


MODULES = _modules()


def _offenders(where: str, banned: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{mod} imports {imp}"
        for mod, imports in MODULES.items()
        if mod == where or mod.startswith(where + ".")
        for imp in imports
        if any(imp == b or imp.startswith(b + ".") for b in banned)
    )


def test_the_shard_never_imports_the_log_the_supervisor_redis_or_grpc() -> None:
    banned = ("aqnode.wal", "aqnode.supervisor", "aqnode.cluster", "redis", "grpc")
    assert _offenders("aqnode.shard", banned) == []


def test_the_cluster_never_imports_the_shard_the_cli_or_redis() -> None:
    banned = ("aqnode.shard", "aqnode.cli", "redis")
    assert _offenders("aqnode.cluster", banned) == []


def test_the_log_never_imports_a_process_role() -> None:
    banned = ("aqnode.supervisor", "aqnode.shard", "aqnode.cli", "aqnode.client", "grpc")
    assert _offenders("aqnode.wal", banned) == []


def test_only_the_wal_package_imports_redis() -> None:
    outside = [
        f"{mod} imports {imp}"
        for mod, imports in MODULES.items()
        if not mod.startswith("aqnode.wal")
        for imp in imports
        if imp == "redis" or imp.startswith("redis.")
    ]
    assert outside == []


def test_the_client_imports_only_shared_modules_and_the_stubs() -> None:
    banned = ("aqnode.supervisor", "aqnode.shard", "aqnode.wal", "aqnode.cluster", "aqnode.cli")
    assert _offenders("aqnode.client", banned) == []


def test_shared_modules_import_no_process_role() -> None:
    shared = ("aqnode.api", "aqnode.bus", "aqnode.context", "aqnode.errors", "aqnode.catalogue")
    shared += ("aqnode.wiretypes", "aqnode.validation", "aqnode.registry", "aqnode.codegen")
    banned = ("aqnode.supervisor", "aqnode.shard", "aqnode.wal", "aqnode.ipc", "redis", "grpc")
    assert [o for mod in shared for o in _offenders(mod, banned)] == []


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import aqnode", ("aqnode.ipc", "grpc", "redis", "aqnode.supervisor")),
        ("import aqnode.client", ("aqnode.ipc", "redis", "aqnode.supervisor", "aqnode.shard")),
        ("import aqnode.shard.process", ("redis", "grpc", "aqnode.supervisor", "aqnode.wal")),
    ],
)
def test_importing_a_role_loads_nothing_of_the_others(
    statement: str, absent: tuple[str, ...]
) -> None:
    roots = "('aqnode', 'grpc', 'redis')"
    listing = f"sorted(m for m in sys.modules if m.split('.')[0] in {roots})"
    code = f"{statement}; import sys; print({listing})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(eval(out.stdout))  # a printed list of module names
    assert not {m for m in loaded for a in absent if m == a or m.startswith(a + ".")}
