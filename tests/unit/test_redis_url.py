"""Parsing the config's Redis URLs (Sentinel form included)."""

from __future__ import annotations

import pytest

from aqnode.config import ConfigError, parse_config
from aqnode.util.redis_url import parse_sentinel_url


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
