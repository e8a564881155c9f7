"""The ``aqnode`` command: a thin click shell over the programmatic API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from aqnode import errors

DEFAULT_CONFIG = "node.toml"


def _config_path(config: str | None) -> str:
    return config or os.environ.get("AQNODE_CONFIG") or DEFAULT_CONFIG


def _address(config: str | None, address: str | None) -> str:
    """``--address`` wins; else the config's ``listen``; else the default port."""
    if address:
        return address
    path = _config_path(config)
    if Path(path).exists():
        from aqnode.config import ConfigError, load_config

        try:
            return load_config(path).listen
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    if config:
        raise click.ClickException(f"config file {path} does not exist")
    return "127.0.0.1:50051"


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="node config file [default: $AQNODE_CONFIG, else ./node.toml]",
)
address_option = click.option(
    "--address", default=None, help="HOST:PORT of a node (overrides the config)"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aqnode")
def main() -> None:
    """aqnode: per-entity sequential processing. Strictly once, fail if interrupted."""


@main.command()
@config_option
def serve(config: str | None) -> None:
    """Start a node: a supervisor and its shard processes, until SIGTERM/SIGINT."""
    from aqnode.config import ConfigError, load_config
    from aqnode.supervisor import serve as run_node

    path = _config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        click.echo(f"aqnode: {exc}", err=True)
        sys.exit(2)
    # Handler modules are named relative to where the user runs the node (like uvicorn).
    for entry in (str(Path(path).resolve().parent), os.getcwd()):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p
        for p in (os.getcwd(), str(Path(path).resolve().parent), os.environ.get("PYTHONPATH", ""))
        if p
    )
    sys.exit(run_node(cfg))


@main.command()
@click.argument("entity_type")
@click.argument("message")
@click.argument("entity_id")
@click.option("--data", default="{}", show_default=True, help="the message's fields as JSON")
@click.option("--wait", is_flag=True, help="wait for the handler and print its reply as JSON")
@click.option("--timeout", type=float, default=None, help="seconds to wait for the reply")
@click.option("--message-id", default=None, help="an idempotency key: the same id runs once")
@config_option
@address_option
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
) -> None:
    """Send MESSAGE to ENTITY_TYPE:ENTITY_ID; prints the message id, or the reply with --wait."""
    try:
        json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
    target = _address(config, address)
    result = _run(
        _enqueue(target, entity_type, message, entity_id, data.encode(), wait, timeout, message_id)
    )
    click.echo(json.dumps(result) if wait else result)


async def _enqueue(
    address: str,
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

    async with Client(address) as bus:
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


@main.command()
@config_option
@address_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(config: str | None, address: str | None, as_json: bool) -> None:
    """Show a node: its shards (pid, CPU, memory, workers, queue depth), role, master, epoch."""
    from google.protobuf.json_format import MessageToDict

    from aqnode.client import Client

    async def fetch() -> Any:
        async with Client(_address(config, address)) as bus:
            return await bus.status()

    reply = _run(fetch())
    if as_json:
        click.echo(
            json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2)
        )
        return
    click.echo(
        f"node      {reply.server_id} ({reply.role}, group {reply.service_group}) pid {reply.pid}"
    )
    click.echo(f"listen    {reply.listen}   version {reply.version}   up {reply.uptime_s:.0f}s")
    click.echo(
        f"master    {reply.master}   epoch {reply.epoch}   live messages {reply.live_messages}"
    )
    click.echo(
        f"{'shard':>5} {'pid':>8} {'alive':>5} {'cpu%':>6} {'rss MB':>8} {'workers':>8} "
        f"{'queued':>7} {'handled':>9} {'restarts':>8}"
    )
    for s in reply.shards:
        click.echo(
            f"{s.index:>5} {s.pid:>8} {'yes' if s.alive else 'no':>5} {s.cpu_percent:>6.1f} "
            f"{s.rss_bytes / 1e6:>8.1f} {s.workers:>8} {s.queue_depth:>7} {s.handled:>9} "
            f"{s.restarts:>8}"
        )


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except errors.AqError as exc:
        click.echo(f"aqnode: {exc}", err=True)
        if isinstance(exc, errors.HandlerError) and exc.remote_traceback:
            click.echo(exc.remote_traceback.rstrip(), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
