"""TLS, mutual TLS and the auth token (SPEC 12), with real handshakes against real nodes.

Certificates come from ``openssl`` (tests/tls_fixture.py): a CA and a node certificate
for 127.0.0.1, a client certificate, and an unrelated second CA.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aqnode.client import SyncClient, Tls
from aqnode.errors import AqError
from aqnode.v1 import aqnode_pb2 as pb
from aqnode.v1 import aqnode_pb2_grpc as pb_grpc
from tests.handlers.testkit import Incr, WhoRuns
from tests.integration.test_cluster_membership import CLUSTER, agreed
from tests.node_fixture import node_env, running_node, write_config
from tests.redis_fixture import free_port, wait_for
from tests.tls_fixture import Pki, make_pki

#: a refused handshake or a plaintext client must fail within this, not hang
FAST_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_table(pki: Pki, *, mutual: bool = False, cert: Path | None = None) -> dict[str, Any]:
    table: dict[str, Any] = {
        "cert_file": str(cert or pki.node.cert),
        "key_file": str(pki.node.key if cert is None else cert.with_suffix(".key")),
        "ca_file": str(pki.ca),
    }
    if mutual:
        table["require_client_cert"] = True
    return table


def refused(client_kwargs: dict[str, Any], address: str) -> AqError:
    """The error a call gets from a client made with ``client_kwargs``, asserting it came
    fast (a wrong setup fails, it does not hang)."""
    began = time.monotonic()
    with SyncClient(address, **client_kwargs) as client, pytest.raises(AqError) as caught:
        client.enqueue_and_wait(Incr(name="tls"), timeout=30)
    assert time.monotonic() - began < FAST_S
    return caught.value


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = node_env(None)
    env.pop("AQNODE_AUTH_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "aqnode", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_tls_client_round_trips_and_a_plaintext_or_untrusting_one_fails_fast(
    tmp_path: Path, redis_url: str, pki: Pki
) -> None:
    with running_node(tmp_path, redis_url, tls=tls_table(pki)) as node:
        with SyncClient(node.address, tls=Tls(str(pki.ca))) as client:
            assert client.enqueue_and_wait(Incr(name="tls")).value == 1
            assert client.status().server_id
        plain = refused({}, node.address)
        assert plain.code == "UNAVAILABLE" and "tls=" in plain.message
        untrusting = refused({"tls": Tls(str(pki.other_ca))}, node.address)
        assert untrusting.code == "UNAVAILABLE" and "TLS handshake" in untrusting.message
        # The CLI reads [tls] from the config (its CA), or takes --tls-ca.
        shown = cli("status", "--json", "--config", str(node.config_path))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["server_id"]
        bare = cli("status", "--address", node.address)
        assert bare.returncode == 1 and "UNAVAILABLE" in bare.stderr
        given = cli("status", "--address", node.address, "--tls-ca", str(pki.ca))
        assert given.returncode == 0, given.stderr


def test_mutual_tls_needs_a_client_certificate(tmp_path: Path, redis_url: str, pki: Pki) -> None:
    with running_node(tmp_path, redis_url, tls=tls_table(pki, mutual=True)) as node:
        without = refused({"tls": Tls(str(pki.ca))}, node.address)
        assert without.code == "UNAVAILABLE"
        signed = Tls(str(pki.ca), str(pki.client.cert), str(pki.client.key))
        with SyncClient(node.address, tls=signed) as client:
            assert client.enqueue_and_wait(Incr(name="mtls")).value == 1
        strange = Tls(str(pki.ca), str(pki.other_node.cert), str(pki.other_node.key))
        assert refused({"tls": strange}, node.address).code == "UNAVAILABLE"
        # CLI: the config's own certificate stands in as the client's; or --tls-cert/key.
        assert cli("status", "--config", str(node.config_path)).returncode == 0
        no_cert = cli("status", "--address", node.address, "--tls-ca", str(pki.ca))
        assert no_cert.returncode == 1
        with_cert = cli(
            "status",
            "--address",
            node.address,
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            str(pki.client.cert),
            "--tls-key",
            str(pki.client.key),
        )
        assert with_cert.returncode == 0, with_cert.stderr


@pytest.mark.parametrize("fault", ["missing cert", "missing ca", "key of another cert", "not pem"])
def test_a_misconfigured_tls_setup_stops_the_node_naming_the_file(
    tmp_path: Path, redis_url: str, pki: Pki, fault: str
) -> None:
    table = tls_table(pki)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    culprit = {
        "missing cert": ("cert_file", str(tmp_path / "nowhere.pem")),
        "missing ca": ("ca_file", str(tmp_path / "no-ca.pem")),
        "key of another cert": ("key_file", str(pki.other_node.key)),
        "not pem": ("cert_file", str(junk)),
    }[fault]
    table[culprit[0]] = culprit[1]
    config = write_config(tmp_path / "node.toml", redis_url, free_port(), tls=table)
    result = subprocess.run(
        [sys.executable, "-m", "aqnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=node_env(redis_url),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert culprit[1] in last and culprit[0] in last, last


def test_sighup_reloads_the_certificates_without_a_restart(
    tmp_path: Path, redis_url: str, pki: Pki
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.node.cert, live / "node.pem")
    shutil.copy(pki.node.key, live / "node.key")
    table = tls_table(pki, cert=live / "node.pem")
    with running_node(tmp_path / "n", redis_url, tls=table) as node:
        with SyncClient(node.address, tls=Tls(str(pki.ca))) as client:
            assert client.enqueue_and_wait(Incr(name="hup")).value == 1
        # The certificate is renewed (here: by another CA) and the node told.
        shutil.copy(pki.other_node.cert, live / "node.pem")
        shutil.copy(pki.other_node.key, live / "node.key")
        os.kill(node.pid, signal.SIGHUP)
        wait_for(lambda: "TLS certificates reloaded" in node.log(), timeout=10)

        def new_cert_served() -> bool:
            try:
                with SyncClient(node.address, tls=Tls(str(pki.other_ca))) as fresh:
                    return fresh.enqueue_and_wait(Incr(name="hup"), timeout=5).value == 2
            except AqError:
                return False

        wait_for(new_cert_served, timeout=10)
        assert node.proc.poll() is None and "restarting" not in node.log()
        # A bad file on a later SIGHUP keeps what is in use, and says why.
        (live / "node.key").write_text("garbage\n")
        os.kill(node.pid, signal.SIGHUP)
        wait_for(lambda: "not reloaded" in node.log(), timeout=10)
        with SyncClient(node.address, tls=Tls(str(pki.other_ca))) as fresh:
            assert fresh.enqueue_and_wait(Incr(name="hup"), timeout=5).value == 3


TOKEN = "tok-3f9a1c77e2-never-logged"


def test_the_token_is_checked_on_every_call_and_never_shown(tmp_path: Path, redis_url: str) -> None:
    with running_node(tmp_path, redis_url, auth_token=TOKEN) as node:
        for token in (None, "wrong-token"):
            with SyncClient(node.address, auth_token=token) as client:
                with pytest.raises(AqError) as sent:
                    client.enqueue(Incr(name="auth"))
                assert sent.value.code == "UNAUTHENTICATED"
                with pytest.raises(AqError) as asked:
                    client.status()
                assert asked.value.code == "UNAUTHENTICATED"
        with grpc.insecure_channel(node.address) as channel:
            stub = pb_grpc.AqNodeStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as raw:
                stub.Status(pb.StatusRequest(), timeout=10)
            assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as wrong:
                stub.Status(
                    pb.StatusRequest(), timeout=10, metadata=[("authorization", "Bearer nope")]
                )
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong_cli = cli("status", "--address", node.address, "--auth-token", "nope")
        assert wrong_cli.returncode == 1 and "UNAUTHENTICATED" in wrong_cli.stderr
        env_cli = subprocess.run(
            [sys.executable, "-m", "aqnode", "status", "--json", "--address", node.address],
            capture_output=True,
            text=True,
            env={**node_env(None), "AQNODE_AUTH_TOKEN": TOKEN},
            timeout=60,
        )
        assert env_cli.returncode == 0, env_cli.stderr
        assert TOKEN not in env_cli.stdout
        with SyncClient(node.address, auth_token=TOKEN) as client:
            assert client.enqueue_and_wait(Incr(name="auth")).value == 1
    assert TOKEN not in node.log()


@contextlib.contextmanager
def tls_group(tmp_path: Path, redis_url: str, pki: Pki) -> Iterator[list[Any]]:
    ids = ["t1", "t2"]
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                running_node(
                    tmp_path / sid,
                    redis_url,
                    server_id=sid,
                    shards=1,
                    cluster=CLUSTER,
                    tls=tls_table(pki, mutual=True),
                    auth_token=TOKEN,
                )
            )
            for sid in ids
        ]
        wait_for(lambda: agreed(nodes, "t1", set(ids)), timeout=15)
        yield nodes


def test_peers_speak_mutual_tls_with_the_token(tmp_path: Path, redis_url: str, pki: Pki) -> None:
    """Peers present their node certificate to each other (the group requires client
    certificates) and send the token: calls through a non-owner are forwarded."""
    with tls_group(tmp_path, redis_url, pki) as nodes:
        owners: set[int] = set()
        names = (f"tls-{i}" for i in range(10_000))
        with nodes[0].client() as via_first:
            # The first call of each entity goes via t1; t2 takes new entities once the
            # master has its list, so new ones are sent until one of them ran there.
            def forwarded() -> bool:
                owners.add(via_first.enqueue_and_wait(WhoRuns(name=next(names))))
                return len(owners) == 2

            wait_for(forwarded, timeout=15, message="nothing was forwarded to t2")
        for node in nodes:
            assert TOKEN not in node.log()
