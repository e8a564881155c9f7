"""What every ``aqnode`` command shares: finding the config and the node, running a call."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from aqnode import errors
from aqnode.bus import MAX_TIMEOUT_S

if TYPE_CHECKING:
    from aqnode.client import Tls
    from aqnode.config import NodeConfig

T = TypeVar("T")

DEFAULT_CONFIG = "node.toml"
DEFAULT_ADDRESS = "127.0.0.1:50051"


def config_path(config: str | None) -> str:
    """``--config``, else ``$AQNODE_CONFIG``, else ``./node.toml`` (SPEC section 4)."""
    return config or os.environ.get("AQNODE_CONFIG") or DEFAULT_CONFIG


def load(path: str) -> NodeConfig:
    from aqnode.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@dataclass(frozen=True)
class Target:
    """A node to talk to, and how: its address, the auth token, TLS (None: plaintext)."""

    address: str
    token: str | None
    tls: Tls | None

    def client_options(self) -> dict[str, Any]:
        return {"auth_token": self.token, "tls": self.tls}


def target(
    config: str | None,
    address: str | None,
    token: str | None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    *,
    cfg: NodeConfig | None = None,
) -> Target:
    """The node to talk to, the auth token to send, the TLS to speak.

    ``--address`` wins over the config's ``listen``, ``--auth-token`` (or
    ``$AQNODE_AUTH_TOKEN``) over its ``auth_token``, ``--tls-*`` over its ``[tls]`` (its
    CA, and its own certificate when it requires client certificates); without a config
    file, the default address. A ``--config`` that names a missing file is an error, not
    a silent default.
    """
    from aqnode.client import Tls

    if cfg is None:
        path = config_path(config)
        if Path(path).exists():
            cfg = load(path)
        elif config:
            raise click.ClickException(f"config file {path} does not exist")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    node_tls = cfg.tls if cfg is not None else None
    if node_tls is not None:
        tls_ca = tls_ca or node_tls.ca_file
        if tls_cert is None and node_tls.require_client_cert:
            tls_cert, tls_key = node_tls.cert_file, node_tls.key_file
    tls = Tls(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert or node_tls) else None
    if cfg is None:
        return Target(address or DEFAULT_ADDRESS, token, tls)
    return Target(address or cfg.listen, token or cfg.auth_token, tls)


#: seconds; the longest --timeout, as for ``timeout=`` in the client
MAX_WAIT_S = MAX_TIMEOUT_S
MIN_WAIT_S = 0.001  #: seconds; the wire counts milliseconds (0 would mean "the default")


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]
else:  # click < 8.2's ParamType is not generic
    _ParamType = click.ParamType


class Seconds(_ParamType):
    """A number of seconds in [``minimum``, ``maximum``]: finite, never NaN or negative;
    anything else is a usage error (exit 2) before anything is sent."""

    name = "seconds"

    def __init__(self, minimum: float = MIN_WAIT_S, maximum: float = MAX_WAIT_S) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not self.minimum <= number <= self.maximum:  # also False for NaN
            self.fail(
                f"{value!r} is not a number of seconds from {self.minimum:.15g} to "
                f"{self.maximum:.15g}",
                param,
                ctx,
            )
        return number


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one client call; an aqnode error becomes ``aqnode: CODE: message`` and exit 1."""
    try:
        return asyncio.run(coro)
    except errors.AqError as exc:
        click.echo(f"aqnode: {exc}", err=True)
        if isinstance(exc, errors.HandlerError) and exc.remote_traceback:
            click.echo(exc.remote_traceback.rstrip(), err=True)
        sys.exit(1)


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="The node's config file.  [default: $AQNODE_CONFIG, else ./node.toml]",
)
address_option = click.option(
    "--address",
    metavar="HOST:PORT",
    default=None,
    help="The node to talk to.  [default: the config's listen, else 127.0.0.1:50051]",
)
auth_token_option = click.option(
    "--auth-token",
    metavar="TOKEN",
    envvar="AQNODE_AUTH_TOKEN",
    default=None,
    help="The node's auth_token.  [default: $AQNODE_AUTH_TOKEN, else the config's]",
)


def tls_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``: speak TLS to the node."""
    for option in reversed(
        [
            click.option(
                "--tls-ca",
                metavar="FILE",
                default=None,
                help="Speak TLS, trusting this CA (PEM).  [default: the config's [tls] "
                "ca_file; with a [tls] but no ca_file, the system's roots]",
            ),
            click.option(
                "--tls-cert",
                metavar="FILE",
                default=None,
                help="A client certificate (PEM), for a node with require_client_cert.  "
                "[default: the config's cert_file when it requires one]",
            ),
            click.option(
                "--tls-key", metavar="FILE", default=None, help="The client certificate's key."
            ),
        ]
    ):
        command = option(command)
    return command
