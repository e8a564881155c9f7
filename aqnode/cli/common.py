"""What every ``aqnode`` command shares: finding the config and the node, running a call."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from aqnode import errors

if TYPE_CHECKING:
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


def target(config: str | None, address: str | None, token: str | None) -> tuple[str, str | None]:
    """The node to talk to and the auth token to send.

    ``--address`` wins over the config's ``listen``, ``--auth-token`` (or
    ``$AQNODE_AUTH_TOKEN``) over its ``auth_token``; without a config file, the default
    address. A ``--config`` that names a missing file is an error, not a silent default.
    """
    path = config_path(config)
    if Path(path).exists():
        cfg = load(path)
        return address or cfg.listen, token or cfg.auth_token
    if config:
        raise click.ClickException(f"config file {path} does not exist")
    return address or DEFAULT_ADDRESS, token


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
