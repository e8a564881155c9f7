"""The node configuration: `node.toml` decoded into typed, frozen msgspec Structs.

Contract: SPEC section 9. An unknown key is an error, never ignored, and every error names
the file, the dotted key and what is wrong (`ConfigError`), because a bad config must stop
`aqnode serve` before any shard starts.

Public API:

- `load_config(path)`: read, decode and validate a file. The returned config's `data_dir`
  is already absolute, resolved against the config file's directory (see `config_dir`):
  the config then means the same from any working directory, and the struct alone (sent to
  the shards with `encode_config`) carries it, with no side channel for the file's path.
- `parse_config(data, path)`: the same for TOML text; a relative `data_dir` is left as is
  (use `NodeConfig.resolved_data_dir(base)`).
- `encode_config` / `decode_config`: msgpack, for the supervisor -> shard hand-off.

Cluster mode is partial: `[cluster]` gives membership, the master and the epoch (SPEC 10).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from aqnode.errors import AqnodeError
from aqnode.util.hostport import parse_host_port
from aqnode.util.redis_url import (
    is_cluster,
    is_sentinel,
    parse_cluster_url,
    parse_sentinel_url,
)

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "Deadlines",
    "EntityConfig",
    "NodeConfig",
    "RedisConfig",
    "RetryOverride",
    "RetryPolicy",
    "WalConfig",
    "config_dir",
    "decode_config",
    "encode_config",
    "load_config",
    "parse_config",
]

# Upper bounds: every value must stay valid where it ends up (protobuf uint32 timeouts,
# Redis EXPIRE, msgpack to the shards, timers), and be far beyond any sensible setting.
#: milliseconds: 30 days, under the wire's uint32 `timeout_ms` (a forwarded wait carries
#: `reply_timeout_ms`), and the client's longest `timeout=`
MAX_MS: Final = 30 * 24 * 3600 * 1000
#: seconds (`[wal] entry_ttl_s`, `idempotency_window_s`): 10 years, a valid Redis EXPIRE
MAX_S: Final = 10 * 365 * 24 * 3600
MAX_COUNT: Final = 2**31 - 1  #: counts, thresholds and limits: an int32
#: shard processes: a shard is an interpreter per core; more than this is a typo
MAX_SHARDS: Final = 256

# Constrained scalar types: msgspec rejects impossible values while decoding and names the key.
PositiveMs = Annotated[int, Meta(gt=0, le=MAX_MS)]  # a timeout/interval in milliseconds, > 0
NonNegMs = Annotated[int, Meta(ge=0, le=MAX_MS)]  # a delay in milliseconds, 0 = none
Seconds = Annotated[int, Meta(ge=1, le=MAX_S)]  # a time to live in seconds
Limit = Annotated[int, Meta(ge=0, le=MAX_COUNT)]  # a depth/count limit, 0 = unbounded
#: a size in bytes; at most 128 MiB, so that one payload or reply always fits in one
#: frame between supervisor and shard (ipc.MAX_FRAME_BYTES is 256 MiB)
Bytes = Annotated[int, Meta(ge=1, le=128 * 1024 * 1024)]
#: counts and thresholds that make no sense below 1
AtLeastOne = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
ShardCount = Annotated[int, Meta(ge=1, le=MAX_SHARDS)]


class ConfigError(AqnodeError):
    """A config file that cannot be used: `str()` is `FILE: KEY: PROBLEM` in one line.

    `key` is dotted (`entities.account.reply_timeout_ms`) or "" when the whole file is bad
    (missing, unreadable, not TOML).
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        # Pass everything to Exception so that the error pickles (shards, multiprocessing).
        super().__init__(path, key, problem)
        self.path = path
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        if self.key:
            return f"{self.path}: {self.key}: {self.problem}"
        return f"{self.path}: {self.problem}"


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    url: str | None = None  # None: the node runs its own redis-server under data_dir
    health_check_ms: PositiveMs = 500
    health_failure_threshold: AtLeastOne = 3  # consecutive failed checks before "degraded"
    socket_timeout_ms: PositiveMs = 5000  # a command that gets no answer this long fails
    connect_timeout_ms: PositiveMs = 2000
    start_timeout_ms: PositiveMs = 10000  # how long `aqnode serve` waits for Redis at start


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_attempts: AtLeastOne = 1  # 1 = strictly once
    backoff: Literal["fixed", "exponential"] = "exponential"
    backoff_delay_ms: NonNegMs = 1000
    max_delay_ms: NonNegMs = 30000


class RetryOverride(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A per-entity-type retry policy: a field left out (None) inherits the root `[retry]`."""

    max_attempts: AtLeastOne | None = None
    backoff: Literal["fixed", "exponential"] | None = None
    backoff_delay_ms: NonNegMs | None = None
    max_delay_ms: NonNegMs | None = None


class WalConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = True  # never disable in production
    cleanup_interval_ms: PositiveMs = 5000
    entry_ttl_s: Seconds = 86400  # safety TTL on every entry, seconds
    idempotency_window_s: Seconds = 3600  # how long a finished message id is remembered


class EntityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    default_entity_id: str | None = None
    on_interrupt: Literal["dead-letter", "retry"] = "dead-letter"
    worker_idle_timeout_ms: PositiveMs = 30000
    worker_max_queue_depth: Limit = 0  # messages waiting behind the running one; 0 = unbounded
    reply_timeout_ms: PositiveMs = 5000
    retry: RetryOverride | None = None


class Deadlines(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    forward_ms: PositiveMs = 1500
    ping_ms: PositiveMs = 1000
    and_wait_ms: PositiveMs = 60000
    sync_ms: PositiveMs = 1000


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = False
    advertised: str | None = None  # HOST:PORT peers dial; None: `listen`
    heartbeat_ms: PositiveMs = 400
    node_ttl_ms: PositiveMs = 1500
    reconcile_interval_ms: PositiveMs = 2000
    leader_debounce_ms: PositiveMs = 800
    max_forward_hops: Limit = 3
    max_concurrent_petitions: AtLeastOne = 50
    peer_suspect_debounce_ms: PositiveMs = 500
    redis_health_check_ms: PositiveMs = 500
    redis_health_failure_threshold: AtLeastOne = 3
    circuit_breaker_failure_threshold: AtLeastOne = 3
    circuit_breaker_cooldown_ms: PositiveMs = 2000
    keepalive_time_ms: PositiveMs = 10000
    keepalive_timeout_ms: PositiveMs = 5000
    deadlines: Deadlines = msgspec.field(default_factory=Deadlines)


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """TLS for the gRPC port (clients and peers); paths relative to the config file."""

    cert_file: str  # PEM: this node's certificate (chain), shown to clients and peers
    key_file: str  # PEM: its private key
    ca_file: str | None = None  # PEM: the CA that signs peers (and client certificates)
    require_client_cert: bool = False  # mutual TLS: clients must present a certificate


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    handlers: list[str] = []  # dotted module names, imported by the shards
    shards: ShardCount | Literal["auto"] = "auto"  # "auto": one per usable core (<= MAX_SHARDS)
    listen: str = "127.0.0.1:50051"  # gRPC HOST:PORT, client and peer API
    #: HOST:PORT of the native protocol (the Python client's fast path; TLS with [tls]);
    #: None: only the node's Unix socket <data_dir>/native.sock
    native_listen: str | None = None
    server_id: str | None = None  # None: generated once and kept in data_dir
    service_group: str = "default"
    data_dir: str = "./.aqnode"  # relative to the config file's directory
    key_prefix: str = "aq"
    max_total_workers: Limit = 10000  # 0 = unbounded
    max_total_queue_depth: Limit = 100000  # 0 = unbounded
    max_payload_bytes: Bytes = 4 * 1024 * 1024  # larger payloads get PAYLOAD_TOO_LARGE
    max_reply_bytes: Bytes = 16 * 1024 * 1024  # a larger reply fails its message
    max_id_bytes: Bytes = 1024  # entity ids and message ids (UTF-8)
    verbose: bool = False
    metrics_listen: str | None = None  # HOST:PORT for Prometheus text; None: no metrics port
    drain_timeout_ms: PositiveMs = 10000
    shard_heartbeat_ms: PositiveMs = 1000
    #: a shard whose event loop sends no heartbeat for this long is killed and restarted
    #: (its running messages are interrupted); 0 = never
    shard_stall_timeout_ms: NonNegMs = 60000
    #: a shard that has not imported its handler modules (and said Ready) this long after
    #: it started is killed, and the node stops: a module that never finishes importing
    shard_start_timeout_ms: PositiveMs = 60000
    auth_token: str | None = None  # shared token; None: no authentication
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    wal: WalConfig = msgspec.field(default_factory=WalConfig)
    entities: dict[str, EntityConfig] = {}
    cluster: ClusterConfig | None = None  # membership, master and epoch (placement: not yet)
    tls: TlsConfig | None = None  # None: plaintext gRPC

    def entity(self, name: str) -> EntityConfig:
        """The `[entities.NAME]` section, or the defaults for an entity type not configured."""
        return self.entities.get(name, _DEFAULT_ENTITY)

    def retry_for(self, name: str) -> RetryPolicy:
        """The root `[retry]` with the entity type's `retry = {...}` fields laid over it."""
        override = self.entity(name).retry
        if override is None:
            return self.retry
        changes = {
            f.name: v
            for f in msgspec.structs.fields(override)
            if (v := getattr(override, f.name)) is not None
        }
        return msgspec.structs.replace(self.retry, **changes)

    def shard_count(self) -> int:
        """`shards`, with "auto" resolved to the number of usable physical cores (>= 1)."""
        if self.shards != "auto":
            return self.shards
        import psutil  # type: ignore[import-untyped,unused-ignore]

        # Physical cores: a shard is a CPU-bound interpreter, hyperthreads add little.
        cores: int | None = psutil.cpu_count(logical=False) or os.cpu_count()
        n = cores or 1
        # A container or taskset may allow fewer CPUs than the machine has.
        if hasattr(os, "sched_getaffinity"):
            n = min(n, len(os.sched_getaffinity(0)) or n)
        return max(1, min(n, MAX_SHARDS))

    def resolved_data_dir(self, base: Path) -> Path:
        """`data_dir` as an absolute path; a relative one is taken from `base`, the config
        file's directory (`config_dir(path)`). `load_config` has done this already."""
        p = Path(self.data_dir).expanduser()
        return (p if p.is_absolute() else Path(base) / p).resolve()

    def validate(self, path: str = "<string>") -> None:
        """Checks msgspec cannot express; raises `ConfigError` naming the key."""
        try:
            _validate(self)
        except _Invalid as e:
            raise ConfigError(path, e.key, e.problem) from None


_DEFAULT_ENTITY: Final = EntityConfig()

# --- validation after decoding --------------------------------------------------------------

REDIS_URL_SCHEMES: Final = frozenset(
    {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster"}
)
_MODULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


def _toml_repr(value: object) -> str:
    """A value as the user wrote it in TOML (strings in double quotes, true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _host_port_problem(value: str) -> str | None:
    """None if `value` is HOST:PORT (IPv6 in brackets) with a port 1..65535."""
    try:
        parse_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None


def _name_problem(value: str, what: str, forbidden: str = "{}") -> str | None:
    """Names end up in Redis keys: no whitespace, no hash-tag braces (and `forbidden`)."""
    if not value:
        return f"Expected {what}, got an empty string"
    bad = [c for c in value if c.isspace() or c in forbidden]
    if bad:
        chars = " ".join(sorted({"whitespace" if c.isspace() else c for c in bad}))
        return f"Expected {what} without {chars}, got {_toml_repr(value)}"
    return None


def _redis_url_problem(url: str) -> str | None:
    schemes = ", ".join(f"{s}://" for s in sorted(REDIS_URL_SCHEMES))
    if is_sentinel(url) or is_cluster(url):
        try:
            (parse_sentinel_url if is_sentinel(url) else parse_cluster_url)(url)
        except ValueError as e:
            return f"{e}, got {_toml_repr(url)}"
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as e:
        return f"Expected a Redis URL, got {_toml_repr(url)} ({e})"
    if parts.scheme not in REDIS_URL_SCHEMES or "://" not in url:
        return f"Expected a URL starting with one of {schemes}, got {_toml_repr(url)}"
    if parts.scheme == "unix" and not parts.path:
        return f"Expected unix:///path/to/redis.sock, got {_toml_repr(url)}"
    return None


def _check_retry(key: str, policy: RetryPolicy) -> None:
    if policy.max_delay_ms < policy.backoff_delay_ms:
        raise _Invalid(
            f"{key}.max_delay_ms",
            f"Expected max_delay_ms ({policy.max_delay_ms}) >= backoff_delay_ms "
            f"({policy.backoff_delay_ms})",
        )


def _validate(cfg: NodeConfig) -> None:
    for i, mod in enumerate(cfg.handlers):
        if not _MODULE_RE.match(mod):
            raise _Invalid(
                f"handlers[{i}]",
                f'Expected a dotted module name like "bank.handlers", got {_toml_repr(mod)}',
            )
    if problem := _host_port_problem(cfg.listen):
        raise _Invalid("listen", problem)
    if cfg.native_listen is not None:
        if problem := _host_port_problem(cfg.native_listen):
            raise _Invalid("native_listen", problem)
        if cfg.native_listen in (cfg.listen, cfg.metrics_listen):
            raise _Invalid(
                "native_listen",
                "Expected an address other than listen's and metrics_listen's",
            )
    if cfg.metrics_listen is not None:
        if problem := _host_port_problem(cfg.metrics_listen):
            raise _Invalid("metrics_listen", problem)
        if cfg.metrics_listen == cfg.listen:
            raise _Invalid(
                "metrics_listen",
                f"Expected an address other than listen's ({_toml_repr(cfg.listen)})",
            )
    if cfg.server_id is not None and (problem := _name_problem(cfg.server_id, "a server id")):
        raise _Invalid("server_id", problem)
    if problem := _name_problem(cfg.service_group, "a service group name"):
        raise _Invalid("service_group", problem)
    if problem := _name_problem(cfg.key_prefix, "a key prefix"):
        raise _Invalid("key_prefix", problem)
    if not cfg.data_dir:
        raise _Invalid("data_dir", "Expected a directory path, got an empty string")
    if cfg.auth_token is not None and not cfg.auth_token:
        # An empty token would silently mean "no authentication"; say so explicitly instead.
        raise _Invalid("auth_token", "Expected a non-empty token (leave the key out for none)")
    if cfg.redis.url is not None and (problem := _redis_url_problem(cfg.redis.url)):
        raise _Invalid("redis.url", problem)
    if cfg.tls is not None:
        for key in ("cert_file", "key_file", "ca_file"):
            if getattr(cfg.tls, key) == "":
                raise _Invalid(f"tls.{key}", "Expected a file path, got an empty string")
        if cfg.tls.require_client_cert and cfg.tls.ca_file is None:
            raise _Invalid(
                "tls.ca_file",
                "require_client_cert needs the CA that signs client certificates: set ca_file",
            )
    _check_retry("retry", cfg.retry)
    for name, ent in cfg.entities.items():
        key = f"entities.{_key_part(name)}"
        # Entity keys are "entity_type:entity_id" inside hash tags: ':' and braces would break them.
        if problem := _name_problem(name, "an entity type name", forbidden="{}:"):
            raise _Invalid(key, problem)
        if ent.default_entity_id is not None and not ent.default_entity_id:
            raise _Invalid(f"{key}.default_entity_id", "Expected a non-empty field name")
        if ent.retry is not None:
            _check_retry(f"{key}.retry", cfg.retry_for(name))
    if cfg.cluster is not None:
        c = cfg.cluster
        if c.advertised is not None and (problem := _host_port_problem(c.advertised)):
            raise _Invalid("cluster.advertised", problem)
        if c.node_ttl_ms <= c.heartbeat_ms:
            raise _Invalid(
                "cluster.node_ttl_ms",
                f"Expected node_ttl_ms ({c.node_ttl_ms}) > heartbeat_ms ({c.heartbeat_ms}), "
                "or every node would expire between its own heartbeats",
            )


# --- translating msgspec's errors into file, key, problem -----------------------------------

# msgspec ends a message with " - at `$.entities[...].x`"; "[...]" is a dict key it omits.
_AT_RE: Final = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_SEG_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])")
_UNKNOWN_RE: Final = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.S)
_ENUM_RE: Final = re.compile(r"^Invalid enum value (?P<value>.*)$", re.S)
_TOML_POS_RE: Final = re.compile(
    r"^(?P<msg>.*) \((?P<pos>at (line \d+, column \d+|end of document))\)$", re.S
)
_BARE_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_MISSING: Final = object()

_Seg = str | int | None  # a table key, an array index, or None for an unnamed dict key


def _key_part(name: str) -> str:
    return name if _BARE_KEY_RE.match(name) else json.dumps(name, ensure_ascii=False)


def _format_key(segs: list[_Seg]) -> str:
    out = ""
    for s in segs:
        if isinstance(s, int):
            out += f"[{s}]"
        else:
            part = "[...]" if s is None else _key_part(s)
            out += f".{part}" if out else part
    return out


def _get(raw: Any, segs: list[_Seg]) -> Any:
    for s in segs:
        in_table = isinstance(raw, dict) and isinstance(s, str) and s in raw
        in_array = isinstance(raw, list) and isinstance(s, int) and s < len(raw)
        if not (in_table or in_array):
            return _MISSING
        raw = raw[s]
    return raw


def _replace(raw: Any, segs: list[_Seg], value: Any) -> Any:
    """A copy of `raw` with the value at `segs` replaced (copying only along the path)."""
    if not segs:
        return value
    head, rest = segs[0], segs[1:]
    copy: Any = dict(raw) if isinstance(raw, dict) else list(raw)
    copy[head] = _replace(raw[head], rest, value)
    return copy


def _convert(raw: Any) -> NodeConfig:
    # The same conversion msgspec.toml.decode(type=...) applies after parsing.
    return msgspec.convert(
        raw,
        NodeConfig,
        builtin_types=(_dt.datetime, _dt.date, _dt.time),
        str_keys=True,
    )


def _name_dict_keys(raw: Any, segs: list[_Seg], message: str) -> list[_Seg]:
    """Replace each unnamed dict key in `segs` with the real one: retry the decode with the
    dict narrowed to one entry; the first entry that reproduces the same error is the culprit
    (msgspec decodes entries in order and stops at the first error)."""
    named: list[_Seg] = []
    for s in segs:
        table = _get(raw, named)
        if s is not None or not isinstance(table, dict):
            named.append(s)
            continue
        found: _Seg = None
        for k, v in table.items():
            try:
                _convert(_replace(raw, named, {k: v}))
            except msgspec.ValidationError as e:
                if str(e) == message:
                    found = k
                    break
        named.append(found)
    return named


def _type_at(segs: list[_Seg]) -> mi.Type | None:
    """The declared type at a key path, following structs, dicts, lists and optionals."""
    t: mi.Type = mi.type_info(NodeConfig)
    for s in segs:
        candidates = t.types if isinstance(t, mi.UnionType) else (t,)
        nxt: mi.Type | None = None
        for c in candidates:
            if isinstance(c, mi.StructType) and isinstance(s, str):
                nxt = next((f.type for f in c.fields if f.encode_name == s), None)
            elif isinstance(c, mi.DictType) and not isinstance(s, int):
                nxt = c.value_type
            elif isinstance(c, mi.ListType) and isinstance(s, int):
                nxt = c.item_type
            if nxt is not None:
                break
        if nxt is None:
            return None
        t = nxt
    return t


def _members(t: mi.Type | None) -> tuple[mi.Type, ...]:
    if t is None:
        return ()
    return t.types if isinstance(t, mi.UnionType) else (t,)


def _describe(message: str, raw: Any) -> tuple[str, str]:
    """A msgspec ValidationError message -> (dotted key, problem a person can act on)."""
    m = _AT_RE.match(message)
    msg, path = (m["msg"], m["path"]) if m else (message, "")
    segs: list[_Seg] = []
    for field, index, unnamed in _SEG_RE.findall(path):
        segs.append(None if unnamed else int(index) if index else field)
    segs = _name_dict_keys(raw, segs, message)

    if u := _UNKNOWN_RE.match(msg):
        name = u["name"]
        allowed = [
            f.encode_name
            for c in _members(_type_at(segs))
            if isinstance(c, mi.StructType)
            for f in c.fields
        ]
        problem = "Unknown key"
        if close := difflib.get_close_matches(name, allowed, n=1):
            problem += f" (did you mean {close[0]}?)"  # a typo is the usual cause
        elif allowed:
            problem += f" (expected one of: {', '.join(allowed)})"
        return _format_key([*segs, name]), problem

    members = _members(_type_at(segs))
    value = _get(raw, segs)
    options = [_toml_repr(v) for c in members if isinstance(c, mi.LiteralType) for v in c.values]
    # A bad choice ("Invalid enum value", or a wrong type where a Literal is allowed): list them.
    if options and (_ENUM_RE.match(msg) or msg.startswith("Expected `")):
        ints = [c for c in members if isinstance(c, mi.IntType)]
        if ints and ints[0].ge is not None and ints[0].le is not None:
            options.append(f"an integer from {ints[0].ge} to {ints[0].le}")
        elif ints and ints[0].ge is not None:
            options.append(f"an integer >= {ints[0].ge}")
        got = _toml_repr(value) if value is not _MISSING else "nothing"
        choices = " or ".join(
            [", ".join(options[:-1]), options[-1]] if len(options) > 1 else options
        )
        return _format_key(segs), f"Expected {choices}, got {got}"

    # TOML's word for msgspec's "object" is "table".
    problem = msg.replace("`object`", "`table`")
    if ", got " not in problem and value is not _MISSING:
        problem += f", got {_toml_repr(value)}"  # e.g. "Expected `int` >= 1, got 0"
    return _format_key(segs), problem


# --- public entry points ---------------------------------------------------------------------


def parse_config(data: bytes | str, path: str = "<string>") -> NodeConfig:
    """Decode and validate TOML text; `path` only labels errors. `data_dir` is left as
    written (see `NodeConfig.resolved_data_dir`)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
        except UnicodeDecodeError as e:
            problem = f"Not UTF-8 text (byte {e.start}): TOML must be UTF-8"
            raise ConfigError(path, "", problem) from None
    try:
        cfg = msgspec.toml.decode(data, type=NodeConfig)
    except msgspec.ValidationError as e:
        raw = msgspec.toml.decode(data)  # parsed fine a moment ago; only to name the key
        key, problem = _describe(str(e), raw)
        raise ConfigError(path, key, problem) from None
    except msgspec.DecodeError as e:
        msg = str(e)
        if p := _TOML_POS_RE.match(msg):  # "Invalid value (at line 3, column 1)"
            msg = f"{p['pos']}: {p['msg']}"
        raise ConfigError(path, "", f"Invalid TOML {msg}") from None
    cfg.validate(path)
    return cfg


def config_dir(path: str | os.PathLike[str]) -> Path:
    """The directory relative paths in a config file are taken from: the file's own."""
    return Path(path).expanduser().resolve().parent


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read, decode and validate a config file. `data_dir` comes back absolute, resolved
    against the file's directory, so the config means the same from any working directory."""
    label = os.fspath(path)
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(label, "", f"Config file does not exist ({p.absolute()})") from None
    except IsADirectoryError:
        raise ConfigError(label, "", "Is a directory, expected a TOML config file") from None
    except OSError as e:
        raise ConfigError(label, "", f"Cannot read the config file: {e.strerror}") from None
    cfg = parse_config(data, label)
    base = config_dir(p)
    data_dir = str(cfg.resolved_data_dir(base))
    tls = cfg.tls
    if tls is not None:
        # Relative TLS paths mean the same from any working directory, like data_dir.
        tls = msgspec.structs.replace(
            tls,
            cert_file=str(base / Path(tls.cert_file).expanduser()),
            key_file=str(base / Path(tls.key_file).expanduser()),
            ca_file=None if tls.ca_file is None else str(base / Path(tls.ca_file).expanduser()),
        )
    return msgspec.structs.replace(cfg, data_dir=data_dir, tls=tls)


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(NodeConfig)


def encode_config(cfg: NodeConfig) -> bytes:
    """msgpack bytes for handing a loaded config to a shard process."""
    return _ENCODER.encode(cfg)


def decode_config(data: bytes) -> NodeConfig:
    """The inverse of `encode_config`; validates again, as a shard must not run on a bad one."""
    try:
        cfg = _DECODER.decode(data)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise ConfigError("<msgpack>", "", f"Invalid encoded config: {e}") from None
    cfg.validate("<msgpack>")
    return cfg
