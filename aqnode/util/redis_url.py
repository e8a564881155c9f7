"""Parsing the config's ``[redis] url``, Sentinel and Cluster URLs included (no redis
import here).

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are. A Sentinel URL
names the sentinels and the monitored service:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]

The client then asks the sentinels for the current master on every new connection, so
a failover is followed by the next reconnect (the log's own connection included).

A Redis Cluster URL names some of the cluster's nodes (the client learns the rest):

    redis+cluster://[[user]:password@]host:port[,host:port...]      (rediss+cluster: TLS)
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aqnode.util.hostport import parse_host_port

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


@dataclass(frozen=True)
class ClusterTarget:
    nodes: list[tuple[str, int]]  #: where to start; the client discovers the others
    username: str | None
    password: str | None
    tls: bool


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def is_cluster(url: str) -> bool:
    return any(url.startswith(f"{scheme}://") for scheme in CLUSTER_SCHEMES)


def _credentials(auth: str) -> tuple[str | None, str | None]:
    if not auth:
        return None, None
    user, sep, secret = auth.partition(":")
    return (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``: fit for a log line."""
    scheme, sep, rest = url.partition("://")
    auth, at, hosts = rest.rpartition("@")
    if not (sep and at):
        return url
    user, colon, _ = auth.partition(":")
    return f"{scheme}://{user}:***@{hosts}" if colon else f"{scheme}://***@{hosts}"


def parse_cluster_url(url: str) -> ClusterTarget:
    """Split a Redis Cluster URL; ValueError with a sentence a person can act on."""
    scheme, _, rest = url.partition("://")
    auth, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: leave the /db part out")
    nodes = [parse_host_port(h, default_port=DEFAULT_REDIS_PORT) for h in hosts.split(",") if h]
    if not nodes:
        raise ValueError(
            "a Redis Cluster URL needs at least one node: redis+cluster://HOST:PORT[,HOST:PORT]"
        )
    username, password = _credentials(auth)
    return ClusterTarget(nodes, username, password, tls=scheme == "rediss+cluster")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a Sentinel URL; ValueError with a sentence a person can act on."""
    rest = url[len(f"{SENTINEL_SCHEME}://") :]
    auth, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    username, password = _credentials(auth)
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
