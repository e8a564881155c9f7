"""Parsing the config's Redis URLs (Sentinel and Cluster forms included), and hiding passwords."""

from __future__ import annotations

import pytest

from aqnode.config import ConfigError, parse_config
from aqnode.util.redis_url import parse_cluster_url, parse_sentinel_url, redacted


def test_sentinel_urls_parse() -> None:
    target = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/billing/2")
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (target.service, target.db, target.password, target.username) == (
        "billing",
        2,
        "s3cret",
        None,
    )
    assert parse_sentinel_url("redis+sentinel://u:p@h:1/svc").username == "u"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:1", "service"),
        ("redis+sentinel:///svc", "at least one sentinel"),
        ("redis+sentinel://h:x/svc", "port from 1"),
        ("redis+sentinel://h:1/svc/zero", "number"),
    ],
)
def test_bad_sentinel_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'handlers = ["x"]\n[redis]\nurl = "{url}"\n', "node.toml")
    assert caught.value.key == "redis.url" and problem in str(caught.value)


def test_a_good_sentinel_url_is_accepted() -> None:
    cfg = parse_config('handlers = ["x"]\n[redis]\nurl = "redis+sentinel://a:1,b:2/svc"\n')
    assert cfg.redis.url == "redis+sentinel://a:1,b:2/svc"


def test_cluster_urls_parse() -> None:
    target = parse_cluster_url("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2")
    assert target.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379)]
    assert (target.username, target.password, target.tls) == ("app", "s@cret", False)
    assert parse_cluster_url("rediss+cluster://h:1").tls


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "at least one node"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:x", "port from 1"),
    ],
)
def test_bad_cluster_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'handlers = ["x"]\n[redis]\nurl = "{url}"\n', "node.toml")
    assert caught.value.key == "redis.url" and problem in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://pw@h:1", "redis://***@h:1"),
        ("redis+cluster://:pw@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_passwords_never_reach_a_log_line(url: str, shown: str) -> None:
    assert redacted(url) == shown
