"""Redis clients from the config's ``[redis] url``, Sentinel URLs included.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are. A Sentinel URL
names the sentinels and the monitored service:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]

The client then asks the sentinels for the current master on every new connection, so
a failover is followed by the next reconnect (the log's own connection included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a Sentinel URL; ValueError with a sentence a person can act on."""
    rest = url[len(f"{SENTINEL_SCHEME}://") :]
    auth, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    username = password = None
    if auth:
        user, sep, secret = auth.partition(":")
        username, password = (
            (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))
        )
    sentinels = [_host_port(h) for h in hosts.split(",") if h]
    if not sentinels:
        raise ValueError(
            "a Sentinel URL needs at least one sentinel: redis+sentinel://HOST:PORT/SERVICE"
        )
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(
            "a Sentinel URL needs the monitored service: redis+sentinel://HOST:PORT/SERVICE"
        )
    db = 0
    if len(parts) > 1:
        if not parts[1].isdigit():
            raise ValueError(f"the database in a Sentinel URL is a number, not {parts[1]!r}")
        db = int(parts[1])
    return SentinelTarget(sentinels, unquote(parts[0]), db, username, password)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if "]" not in text.rsplit(":", 1)[-1] else ("", "", "")
    if not sep:
        return text.strip("[]"), DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel {text!r} has no valid port")
    return host.strip("[]"), int(port)


def async_client(url: str, **options: Any) -> Any:
    """A ``redis.asyncio.Redis`` for ``url``; ``options`` go to every connection."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    return _client(url, options, aioredis.Redis, Sentinel)


def sync_client(url: str, **options: Any) -> Any:
    """A blocking ``redis.Redis`` for ``url`` (the CLI's)."""
    import redis
    from redis.sentinel import Sentinel

    return _client(url, options, redis.Redis, Sentinel)


def _client(url: str, options: dict[str, Any], redis_class: Any, sentinel_class: Any) -> Any:
    if not is_sentinel(url):
        return redis_class.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel = sentinel_class(target.sentinels, socket_timeout=options.get("socket_timeout"))
    return sentinel.master_for(
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
