"""Redis clients for the config's ``[redis] url`` (plain, TLS, unix socket, Sentinel,
Cluster)."""

from __future__ import annotations

from typing import Any

from aqnode.util.redis_url import (
    is_cluster,
    is_sentinel,
    parse_cluster_url,
    parse_sentinel_url,
    redacted,
)


def async_client(url: str, **options: Any) -> Any:
    """A ``redis.asyncio.Redis`` (or ``RedisCluster``) for ``url``; ``options`` go to every
    connection."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    if is_cluster(url):
        return _cluster(url, options, RedisCluster, ClusterNode)
    return _client(url, options, aioredis.Redis, Sentinel)


def sync_client(url: str, **options: Any) -> Any:
    """A blocking ``redis.Redis`` (or ``RedisCluster``) for ``url`` (the CLI's)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    if is_cluster(url):
        return _cluster(url, options, RedisCluster, ClusterNode)
    return _client(url, options, redis.Redis, Sentinel)


def _cluster(url: str, options: dict[str, Any], cluster_class: Any, node_class: Any) -> Any:
    """Every key aqnode uses carries a hash tag (``wal/keys.py``), so each script and each
    log touches one slot: the cluster client routes them by key."""
    target = parse_cluster_url(url)
    return cluster_class(
        startup_nodes=[node_class(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )


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


def log_client(url: str, *, socket_timeout_s: float, connect_timeout_s: float) -> Any:
    """The supervisor's client: no client-side retries, so a dead Redis fails fast with
    REDIS_UNAVAILABLE instead of hiding behind reconnect attempts. ValueError on a bad URL."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return async_client(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        # A cluster client follows one redirection (MOVED after a slot changed hands).
        retry=Retry(NoBackoff(), 1 if is_cluster(url) else 0),
    )


def is_cluster_client(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


async def ping(client: Any, timeout_s: float) -> None:
    """PING within ``timeout_s``; :class:`aqnode.errors.RedisUnavailable` if it fails."""
    import asyncio

    from aqnode.wal.redis_errors import translated

    with translated():
        await asyncio.wait_for(client.ping(), timeout_s)


def ping_sync(url: str) -> Any:
    """A blocking client for ``url`` that answered a PING (the CLI's log reads).

    Raises ValueError for a URL that cannot be used, RedisUnavailable if Redis is away."""
    from aqnode.wal.redis_errors import translated

    client = sync_client(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    with translated(f"Redis at {redacted(url)}"):
        client.ping()
    return client
