"""Certificates for the TLS tests, made with the ``openssl`` command line.

``make_pki(dir)``: a CA, a certificate for 127.0.0.1/localhost that serves as node
certificate and as client certificate (serverAuth and clientAuth), a client-only
certificate, and a second, unrelated CA with its own node certificate (a client that
trusts only one of the two must refuse the other).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    node: Pair  #: signed by ca; 127.0.0.1 and localhost; server and client use
    client: Pair  #: signed by ca; client use only
    other_ca: Path
    other_node: Pair  #: signed by other_ca


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _ca(directory: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def _leaf(directory: Path, name: str, ca: str, usage: str, san: str | None) -> Pair:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=directory,
    )  # fmt: skip
    ext = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return Pair(directory / f"{name}.pem", directory / f"{name}.key")


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: the TLS tests make their certificates with it")
    directory.mkdir(parents=True, exist_ok=True)
    local = "IP:127.0.0.1,DNS:localhost"
    ca = _ca(directory, "ca")
    node = _leaf(directory, "node", "ca", "serverAuth,clientAuth", local)
    client = _leaf(directory, "client", "ca", "clientAuth", None)
    other_ca = _ca(directory, "other-ca")
    other_node = _leaf(directory, "other-node", "other-ca", "serverAuth,clientAuth", local)
    return Pki(ca, node, client, other_ca, other_node)
