"""The ``aqnode`` command: a thin click shell over the programmatic API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aqnode import errors

if TYPE_CHECKING:
    from aqnode.config import NodeConfig
    from aqnode.wal.dlq import DeadLetter, DeadLetterQueue

DEFAULT_CONFIG = "node.toml"


def _config_path(config: str | None) -> str:
    return config or os.environ.get("AQNODE_CONFIG") or DEFAULT_CONFIG


def _target(config: str | None, address: str | None) -> tuple[str, str | None]:
    """The node to talk to and its auth token: ``--address`` wins over the config's
    ``listen``; without a config file, the default port and no token."""
    path = _config_path(config)
    if Path(path).exists():
        from aqnode.config import ConfigError, load_config

        try:
            cfg = load_config(path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        return address or cfg.listen, cfg.auth_token
    if config:
        raise click.ClickException(f"config file {path} does not exist")
    return address or "127.0.0.1:50051", os.environ.get("AQNODE_AUTH_TOKEN")


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
    from aqnode.supervisor.node import serve as run_node

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
    target, token = _target(config, address)
    result = _run(
        _enqueue(
            target, token, entity_type, message, entity_id, data.encode(), wait, timeout, message_id
        )
    )
    click.echo(json.dumps(result) if wait else result)


async def _enqueue(
    address: str,
    token: str | None,
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

    async with Client(address, auth_token=token) as bus:
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

    target, token = _target(config, address)

    async def fetch() -> Any:
        async with Client(target, auth_token=token) as bus:
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
        f"{'queued':>7} {'handled':>9} {'per s':>8} {'restarts':>8}"
    )
    for s in reply.shards:
        click.echo(
            f"{s.index:>5} {s.pid:>8} {'yes' if s.alive else 'no':>5} {s.cpu_percent:>6.1f} "
            f"{s.rss_bytes / 1e6:>8.1f} {s.workers:>8} {s.queue_depth:>7} {s.handled:>9} "
            f"{s.handled_per_s:>8.0f} {s.restarts:>8}"
        )


# ---- dead letters ----------------------------------------------------------------------


def _node_config(config: str | None) -> NodeConfig:
    from aqnode.config import ConfigError, load_config

    path = _config_path(config)
    if not Path(path).exists():
        raise click.ClickException(
            f"config file {path} does not exist: the dead-letter commands read the node's "
            "Redis and key prefix from it (use --config FILE or set AQNODE_CONFIG)"
        )
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _dlq(cfg: NodeConfig, redis_url: str | None) -> DeadLetterQueue:
    from aqnode.wal.dlq import DeadLetterQueue, redis_url_for
    from aqnode.wal.url import ping_sync

    url = redis_url or redis_url_for(cfg)
    try:
        client = ping_sync(url)
    except ValueError as exc:
        raise click.ClickException(f"cannot use Redis URL {url!r}: {exc}") from None
    except errors.AqError as exc:
        raise click.ClickException(f"cannot reach Redis at {url}: {exc.message}") from None
    return DeadLetterQueue(client, cfg.key_prefix, cfg.wal.entry_ttl_s)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(f"{question} Pass --yes to confirm when not on a terminal.")
    click.confirm(question, abort=True)


redis_url_option = click.option(
    "--redis-url", default=None, help="Redis URL (overrides the config's; default: the node's)"
)


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages."""


@dlq.command("list")
@click.option("--entity-type", default=None, help="only this entity type")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@config_option
@redis_url_option
def dlq_list(
    entity_type: str | None, as_json: bool, config: str | None, redis_url: str | None
) -> None:
    """List dead letters, oldest first."""
    letters = _dlq(_node_config(config), redis_url).entries(entity_type)
    if as_json:
        click.echo(json.dumps([d.public() for d in letters], indent=2, default=str))
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'id':<28} {'entity':<30} {'message':<18} {'reason':<12} {'att':>3}  when")
    for d in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.dead_lettered_at))
        entity = f"{d.entity_type}:{d.entity_id}"
        click.echo(
            f"{d.id:<28} {entity:<30} {d.message:<18} {d.reason:<12} {d.attempts:>3}  {when}"
        )


@dlq.command("show")
@click.argument("dlq_id")
@config_option
@redis_url_option
def dlq_show(dlq_id: str, config: str | None, redis_url: str | None) -> None:
    """Show one dead letter in full (as JSON), with the error's traceback."""
    try:
        letter = _dlq(_node_config(config), redis_url).get(dlq_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(json.dumps(letter.public(), indent=2, default=str))


@dlq.command("replay")
@click.option("--id", "dlq_ids", multiple=True, help="a dead letter's id (repeatable)")
@click.option("--all", "replay_all", is_flag=True, help="every dead letter (of --entity-type)")
@click.option("--entity-type", default=None, help="with --all: only this entity type")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@config_option
@address_option
@redis_url_option
def dlq_replay(
    dlq_ids: tuple[str, ...],
    replay_all: bool,
    entity_type: str | None,
    yes: bool,
    config: str | None,
    address: str | None,
    redis_url: str | None,
) -> None:
    """Send dead letters again through the node; replaying one twice enqueues it once."""
    if bool(dlq_ids) == replay_all:
        raise click.UsageError("give --id ID (one or more) or --all")
    cfg = _node_config(config)
    queue = _dlq(cfg, redis_url)
    try:
        letters = queue.entries(entity_type) if replay_all else [queue.get(i) for i in dlq_ids]
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if not letters:
        click.echo("nothing to replay")
        return
    if replay_all:
        _confirm(f"Replay {len(letters)} dead letters?", yes)
    from aqnode.catalogue import MSGPACK
    from aqnode.client import SyncClient

    with SyncClient(address or cfg.listen, auth_token=cfg.auth_token) as client:

        def send(letter: DeadLetter, message_id: str) -> str:
            return client.enqueue_raw(
                letter.entity_type,
                letter.message,
                letter.entity_id,
                letter.payload_bytes,
                message_id=message_id,
                content_type=MSGPACK,
            )

        with click.progressbar(
            length=len(letters), label="replaying", file=sys.stderr, show_pos=True
        ) as bar:
            replayed, failures = queue.replay(letters, send, lambda _d: bar.update(1))
    click.echo(f"replayed {replayed} of {len(letters)}")
    for line in failures:
        click.echo(f"failed: {line}", err=True)
    if failures:
        sys.exit(1)


@dlq.command("purge")
@click.option("--id", "dlq_ids", multiple=True, help="a dead letter's id (repeatable)")
@click.option(
    "--older-than", default=None, help="only those dead-lettered before this long ago (30m, 2h, 7d)"
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@config_option
@redis_url_option
def dlq_purge(
    dlq_ids: tuple[str, ...],
    older_than: str | None,
    yes: bool,
    config: str | None,
    redis_url: str | None,
) -> None:
    """Delete dead letters for good (all of them, unless --id or --older-than)."""
    from aqnode.wal.dlq import parse_duration

    queue = _dlq(_node_config(config), redis_url)
    letters = queue.entries()
    if dlq_ids:
        wanted = set(dlq_ids)
        missing = wanted - {d.id for d in letters}
        if missing:
            raise click.ClickException(
                f"no dead letter {sorted(missing)[0]!r} (see `aqnode dlq list`)"
            )
        letters = [d for d in letters if d.id in wanted]
    if older_than is not None:
        try:
            cutoff = time.time() - parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        letters = [d for d in letters if d.dead_lettered_at < cutoff]
    if not letters:
        click.echo("nothing to purge")
        return
    _confirm(f"Delete {len(letters)} dead letters for good?", yes)
    click.echo(f"purged {queue.purge(letters)}")


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
