"""Parsing the config's ``[redis] url``, Sentinel URLs included (no redis import here).

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are. A Sentinel URL
names the sentinels and the monitored service:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]

The client then asks the sentinels for the current master on every new connection, so
a failover is followed by the next reconnect (the log's own connection included).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aqnode.util.hostport import parse_host_port

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
    sentinels = [
        parse_host_port(h, default_port=DEFAULT_SENTINEL_PORT) for h in hosts.split(",") if h
    ]
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
