"""``aqnode dlq``: list, show, replay and purge dead letters (SPEC section 7).

These commands read the node's Redis directly: ``--redis-url``, else the config's
``[redis] url``, else the node's managed redis-server under ``data_dir``. With
``--redis-url`` no config file is needed (the key prefix is ``--key-prefix``, else the
config's if there is one, else ``aq``). That one runs
only while the node runs, so when it is stopped a command starts it for its own duration
and stops it after. The managed Redis's lock on ``data_dir`` keeps a command from starting
a second redis-server next to a running node, and a node from starting meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aqnode import errors
from aqnode.cli.common import (
    address_option,
    auth_token_option,
    config_option,
    config_path,
    load,
    target,
    tls_options,
)
from aqnode.cli.introspect import DEFAULT_KEY_PREFIX, key_prefix_option
from aqnode.util.redis_url import redacted

if TYPE_CHECKING:
    from aqnode.config import NodeConfig
    from aqnode.wal.dlq import DeadLetter, DeadLetterQueue


def _seconds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """``--older-than``: a number and a unit (30s, 5m, 2h, 7d, 1w), as seconds."""
    from aqnode.wal.dlq import parse_duration

    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{value!r} is too long a duration")
    return seconds


redis_url_option = click.option(
    "--redis-url",
    metavar="URL",
    default=None,
    help="Read this Redis instead.  [default: the config's [redis] url, else the node's "
    "managed Redis]",
)
ids_option = click.option(
    "--id", "dlq_ids", metavar="ID", multiple=True, help="A dead letter's id (repeatable)."
)
yes_option = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")


@click.group(short_help="List, show, replay and purge dead letters.")
def dlq() -> None:
    """List, show, replay and purge dead letters: messages whose handler failed on its
    last attempt (reason `exhausted`) or was interrupted by a crash (`interrupted`).

    They are read from the node's Redis; when the node runs its own (no [redis] url) and
    is stopped, each command starts that Redis for its duration. Replays go through the
    running node.
    """


@dlq.command("list", short_help="List dead letters, oldest first.")
@click.option("--entity-type", metavar="TYPE", default=None, help="Only this entity type.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON array of objects (id, message_id, entity_type, entity_id, message, "
    "payload, reason, error, attempts, dead_lettered_at, ...).",
)
@config_option
@redis_url_option
@key_prefix_option
def dlq_list(
    entity_type: str | None,
    as_json: bool,
    config: str | None,
    redis_url: str | None,
    key_prefix: str | None,
) -> None:
    """List the dead letters of every node on this Redis, oldest first: id, entity,
    message, reason, attempts and when."""
    letters = _queue(config, redis_url, key_prefix).entries(entity_type)
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


@dlq.command("show", short_help="Show one dead letter in full, as JSON.")
@click.argument("dlq_id", metavar="ID")
@config_option
@redis_url_option
@key_prefix_option
def dlq_show(
    dlq_id: str, config: str | None, redis_url: str | None, key_prefix: str | None
) -> None:
    """Show the dead letter ID (from `aqnode dlq list`) in full, as JSON: the message, its
    payload, the reason, and the last error with its traceback."""
    try:
        letter = _queue(config, redis_url, key_prefix).get(dlq_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(json.dumps(letter.public(), indent=2, default=str))


@dlq.command("replay", short_help="Send dead letters again through the node.")
@ids_option
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter (of --entity-type).")
@click.option("--entity-type", metavar="TYPE", default=None, help="With --all: only this type.")
@yes_option
@config_option
@address_option
@auth_token_option
@tls_options
@redis_url_option
@key_prefix_option
def dlq_replay(
    dlq_ids: tuple[str, ...],
    replay_all: bool,
    entity_type: str | None,
    yes: bool,
    config: str | None,
    address: str | None,
    auth_token: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    redis_url: str | None,
    key_prefix: str | None,
) -> None:
    """Send dead letters (--id ID ..., or --all) again through the running node, and take
    them out of the queue. Each goes under the message id `<id>~replay`, so replaying one
    twice enqueues it once. --all asks for confirmation on a terminal."""
    if bool(dlq_ids) == replay_all:
        raise click.UsageError("give --id ID (one or more) or --all")
    cfg = _config(config, redis_url)
    queue = _queue(config, redis_url, key_prefix, cfg=cfg, node_needed=address is None)
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

    node = target(config, address, auth_token, tls_ca, tls_cert, tls_key, cfg=cfg)
    client = SyncClient(node.address, **node.client_options())
    with client:

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


@dlq.command("purge", short_help="Delete dead letters for good.")
@ids_option
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_seconds,
    default=None,
    help="Only those dead-lettered longer ago than this: a number and a unit, like 30s, "
    "5m, 2h or 7d.",
)
@yes_option
@config_option
@redis_url_option
@key_prefix_option
def dlq_purge(
    dlq_ids: tuple[str, ...],
    older_than: float | None,
    yes: bool,
    config: str | None,
    redis_url: str | None,
    key_prefix: str | None,
) -> None:
    """Delete dead letters for good: all of them, unless --id or --older-than narrows it.
    Asks for confirmation on a terminal, and refuses without --yes elsewhere."""
    queue = _queue(config, redis_url, key_prefix)
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
        cutoff = time.time() - older_than
        letters = [d for d in letters if d.dead_lettered_at < cutoff]
    if not letters:
        click.echo("nothing to purge")
        return
    _confirm(f"Delete {len(letters)} dead letters for good?", yes)
    click.echo(f"purged {queue.purge(letters)}")


# ---- finding the queue -------------------------------------------------------------------


def _config(config: str | None, redis_url: str | None) -> NodeConfig | None:
    """The node's config; None when there is no config file but ``--redis-url`` says
    where to read (a ``--config`` that names a missing file is still an error)."""
    path = config_path(config)
    if Path(path).exists():
        return load(path)
    if redis_url is None:
        raise click.ClickException(
            f"config file {path} does not exist: the dead-letter commands read the node's "
            "Redis and key prefix from it (use --config FILE or set AQNODE_CONFIG, or give "
            "--redis-url URL)"
        )
    if config:
        raise click.ClickException(f"config file {path} does not exist")
    return None


def _queue(
    config: str | None,
    redis_url: str | None,
    key_prefix: str | None,
    *,
    cfg: NodeConfig | None = None,
    node_needed: bool = False,
) -> DeadLetterQueue:
    """The dead-letter queue on the node's Redis. A stopped managed Redis is started until
    the command ends, unless ``node_needed``: then the node is stopped too, which is the
    problem to report."""
    from aqnode.util.managed_redis import url_for
    from aqnode.wal.dlq import DeadLetterQueue

    cfg = cfg or _config(config, redis_url)
    if cfg is None:  # no config file: --redis-url, and --key-prefix or the default
        assert redis_url is not None
        return DeadLetterQueue(_connect(redis_url), key_prefix or DEFAULT_KEY_PREFIX)
    url = redis_url or cfg.redis.url
    if url is not None:
        client = _connect(url)
    else:
        url = url_for(Path(cfg.data_dir))
        try:
            client = _connect(url, quiet=True)  # the running node's
        except errors.AqError:
            path = config_path(config)
            if node_needed:
                raise click.ClickException(
                    f"the node is not running (its Redis under {cfg.data_dir} is stopped) and "
                    f"replays go through it: start it with `aqnode serve --config {path}`, "
                    "then replay again"
                ) from None
            ctx = click.get_current_context()
            client = _connect(ctx.with_resource(_managed_redis(Path(cfg.data_dir), path)))
    return DeadLetterQueue(client, key_prefix or cfg.key_prefix, cfg.wal.entry_ttl_s)


def _connect(url: str, *, quiet: bool = False) -> Any:
    """A Redis client that answered PING; ``quiet`` lets the caller handle a silent one."""
    from aqnode.wal.url import ping_sync

    try:
        return ping_sync(url)
    except ValueError as exc:
        raise click.ClickException(f"cannot use Redis URL {redacted(url)!r}: {exc}") from None
    except errors.AqError as exc:
        if quiet:
            raise
        raise click.ClickException(
            f"cannot reach Redis at {redacted(url)}: {exc.message}"
        ) from None


@contextlib.contextmanager
def _managed_redis(data_dir: Path, config_file: str) -> Iterator[str]:
    """Run the stopped node's managed redis-server until the block ends; yields its URL."""
    from aqnode.util.managed_redis import ManagedRedis, redis_dir_for

    where = redis_dir_for(data_dir)
    if not where.is_dir():
        raise click.ClickException(
            f"no node has run with data_dir {data_dir} yet ({where} does not exist), so "
            f"there is nothing to read; start one with `aqnode serve --config {config_file}`"
        )
    managed = ManagedRedis(data_dir)
    try:
        # On this (main) thread: the server's PDEATHSIG is tied to the thread that forks it.
        url = asyncio.run(managed.start())
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0].rstrip(":")
        raise click.ClickException(
            f"the node is stopped and its Redis under {where} could not be started for this "
            f"command: {reason}. Fix that, or start the node (`aqnode serve --config "
            f"{config_file}`) and run this again"
        ) from None
    try:
        yield url
    finally:
        managed.stop_sync()


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(f"{question} Pass --yes to confirm when not on a terminal.")
    click.confirm(question, abort=True)
