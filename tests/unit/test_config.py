"""Unit tests for aqnode.config: decoding node.toml, errors that name the key, helpers."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import msgspec
import pytest

from aqnode.config import (
    ClusterConfig,
    ConfigError,
    EntityConfig,
    NodeConfig,
    RetryPolicy,
    config_dir,
    decode_config,
    encode_config,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "node.toml"

# SPEC section 9, verbatim (two of its comment lines are over 100 columns).
SPEC_EXAMPLE = """
handlers = ["bank.handlers"]        # modules imported by the shards
shards = "auto"                     # or an integer
listen = "127.0.0.1:50051"          # gRPC, client and peer API
server_id = "billing-1"             # stable across restarts (default: generated and kept in data_dir)
service_group = "default"
data_dir = "./.aqnode"              # sockets, the managed Redis, the node id
key_prefix = "aq"
max_total_workers = 10000           # 0 = unbounded
max_total_queue_depth = 100000      # 0 = unbounded
verbose = false

[redis]                             # omit url: the node runs its own redis-server (AOF on) under data_dir
url = "redis://127.0.0.1:6379/0"    # redis://, rediss://, or a Sentinel/Cluster form

[retry]
max_attempts = 1
backoff = "exponential"
backoff_delay_ms = 1000
max_delay_ms = 30000

[wal]
enabled = true                      # never disable in production
cleanup_interval_ms = 5000
entry_ttl_s = 86400

[entities.account]
default_entity_id = "account_id"
on_interrupt = "dead-letter"        # or "retry"
worker_idle_timeout_ms = 30000
worker_max_queue_depth = 0          # 0 = unbounded
reply_timeout_ms = 5000
retry = { max_attempts = 3 }

[cluster]                           # omit for a single node
enabled = true
advertised = "10.0.1.5:50051"
heartbeat_ms = 400
node_ttl_ms = 1500
reconcile_interval_ms = 2000
leader_debounce_ms = 800
max_forward_hops = 3
max_concurrent_petitions = 50
peer_suspect_debounce_ms = 500
redis_health_check_ms = 500
redis_health_failure_threshold = 3
circuit_breaker_failure_threshold = 3
circuit_breaker_cooldown_ms = 2000
keepalive_time_ms = 10000
keepalive_timeout_ms = 5000
deadlines = { forward_ms = 1500, ping_ms = 1000, and_wait_ms = 60000, sync_ms = 1000 }
"""  # noqa: E501 (verbatim from the SPEC)


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "node.toml")
    return info.value


# --- files that work --------------------------------------------------------------------------


def test_example_file_parses() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.handlers == ["aqnode.examples.bank"]
    assert cfg.shards == 2
    assert cfg.shard_count() == 2
    assert cfg.redis.url is None  # the embedded Redis
    assert "account" in cfg.entities
    assert cfg.cluster is None


def test_load_config_makes_data_dir_absolute_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "node.toml").write_text('data_dir = "state"\n')
    cfg = load_config(sub / "node.toml")
    assert cfg.data_dir == str((sub / "state").resolve())
    assert config_dir(sub / "node.toml") == sub.resolve()


def test_resolved_data_dir() -> None:
    base = Path("/srv/aq")
    assert parse_config('data_dir = "./d"').resolved_data_dir(base) == Path("/srv/aq/d")
    assert parse_config('data_dir = "/var/x"').resolved_data_dir(base) == Path("/var/x")


def test_defaults() -> None:
    cfg = parse_config("")
    assert cfg == NodeConfig()
    assert cfg.handlers == []
    assert cfg.shards == "auto"
    assert cfg.listen == "127.0.0.1:50051"
    assert cfg.server_id is None
    assert cfg.service_group == "default"
    assert cfg.data_dir == "./.aqnode"
    assert cfg.key_prefix == "aq"
    assert cfg.max_total_workers == 10000
    assert cfg.max_total_queue_depth == 100000
    assert cfg.verbose is False
    assert cfg.metrics_listen is None
    assert cfg.drain_timeout_ms == 10000
    assert cfg.shard_heartbeat_ms == 1000
    assert cfg.auth_token is None
    assert cfg.redis.url is None
    assert (cfg.redis.health_check_ms, cfg.redis.health_failure_threshold) == (500, 3)
    assert cfg.retry == RetryPolicy(
        max_attempts=1, backoff="exponential", backoff_delay_ms=1000, max_delay_ms=30000
    )
    assert cfg.wal.enabled is True
    assert (cfg.wal.cleanup_interval_ms, cfg.wal.entry_ttl_s) == (5000, 86400)
    assert cfg.wal.idempotency_window_s == 3600
    assert cfg.entities == {}
    assert cfg.cluster is None


def test_unconfigured_entity_gets_defaults() -> None:
    ent = parse_config("").entity("warehouse")
    assert ent == EntityConfig()
    assert ent.on_interrupt == "dead-letter"
    assert (ent.worker_idle_timeout_ms, ent.worker_max_queue_depth) == (30000, 0)
    assert ent.reply_timeout_ms == 5000
    assert parse_config("").retry_for("warehouse") == RetryPolicy()


def test_spec_example_parses_including_cluster() -> None:
    cfg = parse_config(SPEC_EXAMPLE)
    assert cfg.server_id == "billing-1"
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    account = cfg.entity("account")
    assert account.default_entity_id == "account_id"
    assert cfg.retry_for("account").max_attempts == 3
    assert cfg.cluster is not None
    assert cfg.cluster.enabled is True
    assert cfg.cluster.advertised == "10.0.1.5:50051"
    assert cfg.cluster.deadlines.and_wait_ms == 60000
    # Every key the SPEC lists has the SPEC's value as its default too.
    assert msgspec.structs.replace(cfg.cluster, enabled=False, advertised=None) == ClusterConfig()


def test_entity_retry_merge() -> None:
    cfg = parse_config(
        """
        [retry]
        max_attempts = 2
        backoff = "fixed"
        backoff_delay_ms = 100
        max_delay_ms = 500

        [entities.account]
        retry = { max_attempts = 5, max_delay_ms = 9000 }

        [entities.order]
        reply_timeout_ms = 100
        """
    )
    assert cfg.retry_for("account") == RetryPolicy(
        max_attempts=5, backoff="fixed", backoff_delay_ms=100, max_delay_ms=9000
    )
    assert cfg.retry_for("order") == cfg.retry  # a section without retry inherits it all
    assert cfg.retry_for("unknown") == cfg.retry


def test_auto_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    cfg = parse_config('shards = "auto"')
    assert cfg.shard_count() >= 1
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cfg.shard_count() == 1  # nothing known: still one shard
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 1 if logical else None)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert cfg.shard_count() == 1
    assert parse_config("shards = 7").shard_count() == 7


def test_accepted_addresses_and_urls() -> None:
    for listen in ("0.0.0.0:1", "[::1]:50051", "node-1.internal:65535"):
        assert parse_config(f'listen = "{listen}"').listen == listen
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example:6380",
        "unix:///tmp/redis.sock",
        "redis+sentinel://s1:26379/mymaster",
    ):
        assert parse_config(f'[redis]\nurl = "{url}"').redis.url == url


def test_msgpack_round_trip() -> None:
    cfg = parse_config(SPEC_EXAMPLE)
    assert decode_config(encode_config(cfg)) == cfg
    example = load_config(EXAMPLE)
    assert decode_config(encode_config(example)) == example


# --- files that do not ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_toml_syntax_error_gives_the_line() -> None:
    err = config_error('listen = "127.0.0.1:1"\nshards = [\nverbose = true\n')
    assert err.key == ""
    assert "line 3" in err.problem
    assert str(err).startswith("node.toml: Invalid TOML")


def test_unknown_key_at_root() -> None:
    err = config_error("handler = []\n")
    assert err.key == "handler"
    assert "Unknown key" in err.problem
    assert "handlers" in err.problem  # the likely intended key


def test_unknown_key_inside_table() -> None:
    err = config_error("[entities.account]\nreply_timeout = 5\n")
    assert err.key == "entities.account.reply_timeout"
    err = config_error("[entities.account]\nretry = { attempts = 3 }\n")
    assert err.key == "entities.account.retry.attempts"
    err = config_error("[cluster]\ndeadlines = { forward = 1 }\n")
    assert err.key == "cluster.deadlines.forward"


def test_wrong_type_names_the_key() -> None:
    err = config_error('[entities.account]\nreply_timeout_ms = "5s"\n')
    assert err.path == "node.toml"
    assert err.key == "entities.account.reply_timeout_ms"
    assert err.problem == "Expected `int`, got `str`"
    assert str(err) == ("node.toml: entities.account.reply_timeout_ms: Expected `int`, got `str`")
    assert config_error("verbose = 1").key == "verbose"
    assert config_error('redis = "x"').key == "redis"


def test_the_bad_entity_is_named_among_several() -> None:
    err = config_error(
        "[entities.a]\nreply_timeout_ms = 1\n"
        "[entities.b]\nreply_timeout_ms = 2\n"
        '[entities."c d"]\nreply_timeout_ms = 0\n'
    )
    assert err.key == 'entities."c d".reply_timeout_ms'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("shards = 0", "shards"),
        ('shards = "many"', "shards"),
        ("[entities.account]\nreply_timeout_ms = -1", "entities.account.reply_timeout_ms"),
        (
            "[entities.account]\nworker_idle_timeout_ms = 0",
            "entities.account.worker_idle_timeout_ms",
        ),
        (
            "[entities.account]\nworker_max_queue_depth = -1",
            "entities.account.worker_max_queue_depth",
        ),
        ('[entities.account]\non_interrupt = "later"', "entities.account.on_interrupt"),
        ("[entities.account]\nretry = { max_attempts = 0 }", "entities.account.retry.max_attempts"),
        ("max_total_workers = -1", "max_total_workers"),
        ("drain_timeout_ms = 0", "drain_timeout_ms"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
        ('[retry]\nbackoff = "linear"', "retry.backoff"),
        ("[retry]\nbackoff_delay_ms = 5000\nmax_delay_ms = 10", "retry.max_delay_ms"),
        (
            "[entities.account]\nretry = { backoff_delay_ms = 60000 }",
            "entities.account.retry.max_delay_ms",
        ),
        ("[wal]\nentry_ttl_s = 0", "wal.entry_ttl_s"),
        ("[wal]\ncleanup_interval_ms = -5", "wal.cleanup_interval_ms"),
        ("[redis]\nhealth_check_ms = 0", "redis.health_check_ms"),
        ('listen = "127.0.0.1"', "listen"),
        ('listen = "127.0.0.1:0"', "listen"),
        ('listen = "127.0.0.1:70000"', "listen"),
        ('listen = ":50051"', "listen"),
        ('metrics_listen = "localhost"', "metrics_listen"),
        ('[redis]\nurl = "http://127.0.0.1:6379"', "redis.url"),
        ('[redis]\nurl = "127.0.0.1:6379"', "redis.url"),
        ('key_prefix = ""', "key_prefix"),
        ('key_prefix = "{aq}"', "key_prefix"),
        ('key_prefix = "a q"', "key_prefix"),
        ('handlers = ["bank.handlers", "bank/handlers.py"]', "handlers[1]"),
        ('handlers = ["bank.handlers", 3]', "handlers[1]"),
        ('[entities."a:b"]', 'entities."a:b"'),
        ("[cluster]\nheartbeat_ms = 0", "cluster.heartbeat_ms"),
        ('[cluster]\nadvertised = "10.0.1.5"', "cluster.advertised"),
        ("[cluster]\ndeadlines = { ping_ms = 0 }", "cluster.deadlines.ping_ms"),
    ],
)
def test_impossible_values_name_the_key(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert str(err).startswith(f"node.toml: {key}: ")
    assert err.problem


def test_constraint_messages_show_the_value() -> None:
    assert (
        config_error("shards = 0").problem == 'Expected "auto" or an integer from 1 to 256, got 0'
    )
    err = config_error("[wal]\nentry_ttl_s = 0")
    assert err.problem == "Expected `int` >= 1, got 0"
    err = config_error('[retry]\nbackoff = "linear"')
    assert err.problem == 'Expected "exponential" or "fixed", got "linear"'


def test_config_error_pickles() -> None:
    err = config_error("shards = 0")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.key, copy.problem) == (err.path, err.key, err.problem)
    assert str(copy) == str(err)


def test_structs_are_frozen() -> None:
    cfg = parse_config("")
    with pytest.raises(AttributeError):
        cfg.shards = 3  # type: ignore[misc]


def test_bytes_with_bom_and_bad_utf8() -> None:
    assert parse_config(b"\xef\xbb\xbfshards = 3\n").shards == 3
    with pytest.raises(ConfigError) as info:
        parse_config(b"shards = \xff\n", "node.toml")
    assert "UTF-8" in info.value.problem


def test_tls_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    from aqnode.config import load_config

    path = tmp_path / "node.toml"
    path.write_text(
        'handlers = ["x"]\n[tls]\ncert_file = "certs/node.pem"\nkey_file = "/abs/node.key"\n'
    )
    tls = load_config(path).tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (
        str(tmp_path / "certs/node.pem"),
        "/abs/node.key",
        None,
    )


def test_mutual_tls_without_a_ca_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            'handlers = ["x"]\n[tls]\ncert_file = "a"\nkey_file = "b"\nrequire_client_cert = true\n'
        )
    assert caught.value.key == "tls.ca_file"


# --- upper bounds: every integer stays valid where it ends up ---------------------------------


def _int_keys() -> list[tuple[str, str, int]]:
    """(section, key, upper bound) of every integer key in node.toml."""
    import msgspec.inspect as mi

    from aqnode.config import Deadlines, RedisConfig, RetryOverride, WalConfig

    sections: list[tuple[str, type[msgspec.Struct]]] = [
        ("", NodeConfig),
        ("redis", RedisConfig),
        ("retry", RetryPolicy),
        ("wal", WalConfig),
        ("entities.account", EntityConfig),
        ("entities.account.retry", RetryOverride),
        ("cluster", ClusterConfig),
        ("cluster.deadlines", Deadlines),
    ]
    keys = []
    for section, struct in sections:
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        for field in info.fields:
            members = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
            for t in members:
                if isinstance(t, mi.IntType):
                    assert t.le is not None, f"{section}.{field.name} has no upper bound"
                    keys.append((section, field.name, t.le))
    return keys


INT_KEYS = _int_keys()


def _with(section: str, key: str, value: int) -> str:
    return f"[{section}]\n{key} = {value}\n" if section else f"{key} = {value}\n"


@pytest.mark.parametrize(("section", "key", "bound"), INT_KEYS)
def test_every_integer_key_has_an_upper_bound_that_names_the_key(
    section: str, key: str, bound: int
) -> None:
    dotted = f"{section}.{key}" if section else key
    for value in (bound + 1, 100000000000000000000, 9223372036854775807):
        err = config_error(_with(section, key, value))
        assert err.key == dotted
        assert str(value) in err.problem


@pytest.mark.parametrize(("section", "key", "bound"), INT_KEYS)
def test_every_bound_fits_msgpack_protobuf_and_redis(section: str, key: str, bound: int) -> None:
    # msgpack (to the shards) and Redis take a signed 64-bit integer; a duration in
    # milliseconds may travel as the wire's uint32 timeout_ms; seconds become Redis
    # EXPIREs, whose milliseconds must fit in 64 bits too.
    assert bound < 2**63
    if key.endswith("_ms"):
        assert bound <= 2**32 - 1
    if key.endswith("_s"):
        assert bound * 1000 < 2**63
    try:
        cfg = parse_config(_with(section, key, bound))
    except ConfigError as exc:
        # only a relation to another key may refuse the largest value (max_delay_ms >=
        # backoff_delay_ms, node_ttl_ms > heartbeat_ms), never the bound itself
        assert exc.key != (f"{section}.{key}" if section else key)
        return
    assert decode_config(encode_config(cfg)) == cfg


def test_shards_beyond_the_bound_are_refused_at_load(tmp_path: Path) -> None:
    from aqnode.config import MAX_SHARDS

    path = tmp_path / "node.toml"
    path.write_text('handlers = ["x"]\nshards = 100000000000000000000\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "shards"
    assert caught.value.problem == (
        f'Expected "auto" or an integer from 1 to {MAX_SHARDS}, got 100000000000000000000'
    )
    assert parse_config(f"shards = {MAX_SHARDS}").shard_count() == MAX_SHARDS


def test_auto_shards_never_exceed_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from aqnode.config import MAX_SHARDS

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4 * MAX_SHARDS)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(4 * MAX_SHARDS)))
    assert parse_config('shards = "auto"').shard_count() == MAX_SHARDS


def test_an_entry_ttl_redis_cannot_take_is_refused() -> None:
    err = config_error("[wal]\nentry_ttl_s = 9223372036854775807")
    assert err.key == "wal.entry_ttl_s"
    assert err.problem == "Expected `int` <= 315360000, got 9223372036854775807"
    assert parse_config("[wal]\nentry_ttl_s = 315360000").wal.entry_ttl_s == 315360000
