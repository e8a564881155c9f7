"""``aqnode serve``, ``enqueue`` and ``status``: run a node, or talk to one over gRPC."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aqnode.cli.common import (
    Seconds,
    address_option,
    auth_token_option,
    config_option,
    config_path,
    run,
    target,
    tls_options,
)

if TYPE_CHECKING:
    from aqnode.cli.common import Target
    from aqnode.client import NodeStatus


@click.command(short_help="Run a node until SIGTERM or Ctrl-C.")
@config_option
def serve(config: str | None) -> None:
    """Run a node: a supervisor and its shard processes, until SIGTERM or Ctrl-C.

    SIGTERM (or Ctrl-C) drains: running handlers finish, queued messages stay in the log
    for the next start. Without [redis] url in the config, the node also runs its own
    redis-server under data_dir. A second SIGTERM/Ctrl-C stops at once. Exit codes: 0
    after a drain, 2 when it cannot start (config, handler modules, port, data_dir,
    Redis), 1 when it stopped itself after serving.
    """
    from aqnode.config import ConfigError, load_config
    from aqnode.supervisor.node import serve as run_node

    path = config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        click.echo(f"aqnode: {exc}", err=True)
        sys.exit(2)
    # Handler modules are named relative to where the user runs the node (like uvicorn).
    # Only the shards import them (fresh interpreters): they find them through PYTHONPATH.
    here = (str(Path(path).resolve().parent), os.getcwd())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (*reversed(here), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.exit(run_node(cfg))


@click.command(short_help="Send one message; print its id, or its reply.")
@click.argument("entity_type")
@click.argument("message")
@click.argument("entity_id")
@click.option(
    "--data",
    metavar="JSON",
    default="{}",
    show_default=True,
    help="The message's fields, as a JSON object.",
)
@click.option("--wait", is_flag=True, help="Wait for the handler and print its reply as JSON.")
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=Seconds(),
    default=None,
    help="With --wait: how long to wait, 0.001 to 2592000 (30 days).  [default: the "
    "entity type's reply_timeout_ms]",
)
@click.option(
    "--message-id",
    metavar="ID",
    default=None,
    help="An idempotency key: a message id sent twice runs once.",
)
@config_option
@address_option
@auth_token_option
@tls_options
def enqueue(
    entity_type: str,
    message: str,
    entity_id: str,
    data: str,
    wait: bool,
    timeout: float | None,
    message_id: str | None,
    config: str | None,
    address: str | None,
    auth_token: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Send MESSAGE (a message class's name) to the entity ENTITY_TYPE:ENTITY_ID.

    Prints the message id once the message is durable, or with --wait the handler's
    reply as JSON. A failure prints `aqnode: CODE: message` on stderr and exits 1.
    The entity id field may be left out of --data: it is taken from ENTITY_ID.

    \b
    Example:
      aqnode enqueue account Deposit a-1 --data '{"amount": 5}'
    """
    try:
        json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
    node = target(config, address, auth_token, tls_ca, tls_cert, tls_key)
    result = run(
        _enqueue(node, entity_type, message, entity_id, data.encode(), wait, timeout, message_id)
    )
    click.echo(json.dumps(result) if wait else result)


async def _enqueue(
    node: Target,
    entity_type: str,
    message: str,
    entity_id: str,
    data: bytes,
    wait: bool,
    timeout: float | None,
    message_id: str | None,
) -> Any:
    from aqnode.catalogue import JSON
    from aqnode.client import Client

    async with Client(node.address, **node.client_options()) as bus:
        if wait:
            return await bus.enqueue_and_wait_raw(
                entity_type,
                message,
                entity_id,
                data,
                timeout=timeout,
                message_id=message_id,
                content_type=JSON,
            )
        return await bus.enqueue_raw(
            entity_type, message, entity_id, data, message_id=message_id, content_type=JSON
        )


@click.command(short_help="Show a node: role, master, epoch, shards.")
@config_option
@address_option
@auth_token_option
@tls_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (snake_case keys, counts as numbers) for scripts.",
)
def status(
    config: str | None,
    address: str | None,
    auth_token: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    as_json: bool,
) -> None:
    """Show a node: its id, role, master, epoch and members, and one line per shard
    (pid, alive, CPU, memory, workers, queue depth, messages handled, restarts).

    --json prints the same as an object whose top level has role, master, epoch and
    members; the Python client's `status()` returns it as a typed NodeStatus.
    """
    from aqnode.client import Client

    where = target(config, address, auth_token, tls_ca, tls_cert, tls_key)

    async def fetch() -> NodeStatus:
        async with Client(where.address, **where.client_options()) as bus:
            return await bus.status()

    shown = run(fetch())
    if as_json:
        click.echo(shown.to_json())
    else:
        _print_status(shown)


def _print_status(node: NodeStatus) -> None:
    click.echo(
        f"node      {node.server_id} ({node.role}, group {node.service_group}) pid {node.pid}"
    )
    click.echo(f"listen    {node.listen}   version {node.version}   up {node.uptime_s:.0f}s")
    click.echo(f"master    {node.master}   epoch {node.epoch}   live messages {node.live_messages}")
    members = ", ".join(
        f"{m.server_id} {m.address} ({m.role}{'' if m.alive else ', dead'})" for m in node.members
    )
    click.echo(f"members   {members}")
    click.echo(
        f"{'shard':>5} {'pid':>8} {'alive':>5} {'cpu%':>6} {'rss MB':>8} {'workers':>8} "
        f"{'queued':>7} {'handled':>9} {'per s':>8} {'restarts':>8}"
    )
    for s in node.shards:
        click.echo(
            f"{s.index:>5} {s.pid:>8} {'yes' if s.alive else 'no':>5} {s.cpu_percent:>6.1f} "
            f"{s.rss_bytes / 1e6:>8.1f} {s.workers:>8} {s.queue_depth:>7} {s.handled:>9} "
            f"{s.handled_per_s:>8.0f} {s.restarts:>8}"
        )
