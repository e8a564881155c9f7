"""``aqnode introspect``: the registry (SPEC 11), read from Redis.

Redis is found as the ``dlq`` commands find it: ``--redis-url``, else the config's
``[redis] url``, else the node's managed Redis under its ``data_dir``, started for the
command's duration when the node is stopped. So it works with no node running.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aqnode import errors
from aqnode.cli.common import config_option, config_path, load

if TYPE_CHECKING:
    from aqnode.config import NodeConfig
    from aqnode.registry import Snapshot

DEFAULT_KEY_PREFIX = "aq"

redis_url_option = click.option(
    "--redis-url",
    metavar="URL",
    default=None,
    help="Read the registry from this Redis.  [default: the config's [redis] url, else the "
    "node's managed Redis]",
)
key_prefix_option = click.option(
    "--key-prefix",
    metavar="PREFIX",
    default=None,
    help="The nodes' key_prefix.  [default: the config's, else aq]",
)


@click.command(short_help="Show the registry: every group's entity types and messages.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: entity_types (name, service_group, id_field, messages "
    "with name, kind, id_field, schema, reply_schema) and groups (name, catalogue, nodes).",
)
@config_option
@redis_url_option
@key_prefix_option
def introspect(
    as_json: bool, config: str | None, redis_url: str | None, key_prefix: str | None
) -> None:
    """Show the registry: the service groups that published to this Redis in the last
    day with their nodes, each entity type with its messages (command or query, reply
    type, fields with their types, constraints and defaults), and the types they use.

    It reads Redis, so it works while no node of a group runs (a group's entry expires a
    day after its last node was seen). --json prints the JSON Schema of every payload
    and reply too.

    \b
    Examples:
      aqnode introspect
      aqnode introspect --json --redis-url redis://10.0.0.5:6379/0
    """
    from aqnode.codegen import build
    from aqnode.codegen.text import render

    snapshot = read_registry(config, redis_url, key_prefix)
    if as_json:
        click.echo(json.dumps(snapshot.introspect(), indent=2, sort_keys=True))
        return
    click.echo(render(snapshot, build(snapshot)), nl=False)


def read_registry(config: str | None, redis_url: str | None, key_prefix: str | None) -> Snapshot:
    """The registry on the node's Redis (see the module doc); any failure is one line."""
    from aqnode.registry import TTL_S, merge
    from aqnode.wal.registry import RegistryStore

    cfg = _config(config)
    url = redis_url or (cfg.redis.url if cfg is not None else None)
    prefix = key_prefix or (cfg.key_prefix if cfg is not None else DEFAULT_KEY_PREFIX)
    if url is None and cfg is None:
        raise click.ClickException(
            f"no Redis to read: there is no config file {config_path(config)}; give "
            "--redis-url URL, or --config FILE of a node (or set AQNODE_CONFIG)"
        )
    with _redis(cfg, url, config) as client:
        try:
            view = RegistryStore(client, prefix, TTL_S).read_sync()
        except errors.AqError as exc:
            raise click.ClickException(f"reading the registry failed: {exc.message}") from None
    return merge(view.records, view.catalogues)


def _config(config: str | None) -> NodeConfig | None:
    path = config_path(config)
    if Path(path).exists():
        return load(path)
    if config:
        raise click.ClickException(f"config file {path} does not exist")
    return None


@contextlib.contextmanager
def _redis(cfg: NodeConfig | None, url: str | None, config: str | None) -> Iterator[Any]:
    """A Redis client for the read, closed after; a stopped node's managed Redis runs
    until then."""
    from aqnode.cli.dlq import _connect, _managed_redis
    from aqnode.util.managed_redis import url_for

    with contextlib.ExitStack() as stack:
        if url is not None:
            client = _connect(url)
        else:
            assert cfg is not None
            data_dir = Path(cfg.data_dir)
            try:
                client = _connect(url_for(data_dir), quiet=True)  # the running node's
            except errors.AqError:
                managed = stack.enter_context(_managed_redis(data_dir, config_path(config)))
                client = _connect(managed)
        stack.callback(client.close)
        yield client
