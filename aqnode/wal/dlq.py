"""The dead-letter queue (SPEC section 7), read and changed from outside a node.

Dead letters live in each node's log (``<prefix>:{<node>}:dlq`` indexes the entries,
which keep the whole message, the reason, the last error and the times). Listing reads
Redis directly; a replay sends the message back through a node, under the idempotency
key ``<message id>~replay``, so that replaying one entry twice enqueues it once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import redis

from aqnode import errors
from aqnode.config import NodeConfig
from aqnode.util.managed_redis import url_for
from aqnode.wal import entry_body
from aqnode.wal.keys import LogKeys, nodes_key
from aqnode.wal.log import load_lua

REPLAY_SUFFIX = "~replay"


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered message, as ``dlq list --json`` prints it."""

    id: str
    message_id: str
    node: str
    entity_type: str
    entity_id: str
    message: str
    payload: Any
    reason: str
    error: dict[str, Any] | None
    attempts: int
    enqueued_at: float
    dead_lettered_at: float
    payload_bytes: bytes = b""  # the msgpack payload as logged, for replay

    def public(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        del data["payload_bytes"]
        return data


def redis_url_for(config: NodeConfig) -> str:
    """The Redis a node with ``config`` uses: its url, or its managed server's socket."""
    return config.redis.url or url_for(Path(config.data_dir))


class DeadLetterQueue:
    def __init__(self, client: redis.Redis, prefix: str, entry_ttl_s: int = 86400) -> None:
        self.redis = client
        self.prefix = prefix
        self._ttl = entry_ttl_s
        self._take = client.register_script(load_lua("dlq_take"))

    def nodes(self) -> list[str]:
        return sorted(_text(n) for n in self.redis.smembers(nodes_key(self.prefix)))

    def entries(self, entity_type: str | None = None) -> list[DeadLetter]:
        """Every dead letter of every node, oldest first."""
        found: list[DeadLetter] = []
        for node in self.nodes():
            keys = LogKeys(self.prefix, node)
            ids = [_text(i) for i in self.redis.zrange(keys.dlq, 0, -1)]
            pipe = self.redis.pipeline(transaction=False)
            for mid in ids:
                pipe.hgetall(keys.entry(mid))
            for mid, raw in zip(ids, pipe.execute(), strict=True):
                if raw:
                    letter = _letter(node, mid, raw)
                    if entity_type is None or letter.entity_type == entity_type:
                        found.append(letter)
        found.sort(key=lambda d: d.dead_lettered_at)
        return found

    def get(self, dlq_id: str) -> DeadLetter:
        for node in self.nodes():
            keys = LogKeys(self.prefix, node)
            if self.redis.zscore(keys.dlq, dlq_id) is not None:
                raw = self.redis.hgetall(keys.entry(dlq_id))
                if raw:
                    return _letter(node, dlq_id, raw)  # type: ignore[arg-type]
        raise KeyError(f"no dead letter {dlq_id!r} (see `aqnode dlq list`)")

    def replay(
        self,
        letters: Iterable[DeadLetter],
        send: Callable[[DeadLetter, str], str],
        progress: Callable[[DeadLetter], None] = lambda _d: None,
    ) -> tuple[int, list[str]]:
        """Send each letter again through ``send(letter, message_id)`` and take it out of
        the queue. Returns how many were replayed and one line per failure."""
        replayed, failures = 0, []
        for letter in letters:
            try:
                send(letter, letter.message_id + REPLAY_SUFFIX)
            except errors.AqError as exc:
                failures.append(f"{letter.id}: {exc}")
            else:
                self._take_out(letter.node, [letter.id], "replay")
                replayed += 1
            progress(letter)
        return replayed, failures

    def purge(self, letters: Iterable[DeadLetter]) -> int:
        by_node: dict[str, list[str]] = {}
        for letter in letters:
            by_node.setdefault(letter.node, []).append(letter.id)
        return sum(sum(self._take_out(node, ids, "purge")) for node, ids in by_node.items())

    def _take_out(self, node: str, ids: list[str], mode: str) -> list[int]:
        keys = LogKeys(self.prefix, node)
        result = self._take(
            keys=[keys.dlq, keys.done, *(keys.entry(i) for i in ids)],
            args=[repr(time.time()), mode, self._ttl, *ids],
        )
        return [int(x) for x in result]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _letter(node: str, message_id: str, raw: dict[bytes, bytes]) -> DeadLetter:
    fields = entry_body.expand({_text(k): v for k, v in raw.items()}, message_id)
    payload = fields.get("payload", b"")
    error_bytes = fields.get("error", b"")
    return DeadLetter(
        id=_text(fields["id"]),
        message_id=_text(fields["id"]),
        node=node,
        entity_type=_text(fields.get("entity_type", b"")),
        entity_id=_text(fields.get("entity_id", b"")),
        message=_text(fields.get("message", b"")),
        payload=msgspec.msgpack.decode(payload) if payload else None,
        reason=_text(fields.get("reason", b"")),
        error=msgspec.msgpack.decode(error_bytes) if error_bytes else None,
        attempts=int(fields.get("attempts", 0)),
        enqueued_at=float(fields.get("enqueued_at", 0)),
        dead_lettered_at=float(fields.get("dead_lettered_at", 0)),
        payload_bytes=payload,
    )


#: seconds per unit of a duration
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_FORMS = "30s, 5m, 2h or 7d (units: s, m, h, d, w)"


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` -> seconds.

    The unit is required: a bare ``5`` once meant five seconds to ``dlq purge``, which is
    rarely what a person typing it means, and a purge cannot be undone.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        hint = " has no unit" if re.fullmatch(r"\s*[\d.]+\s*", text) else " is not a duration"
        raise ValueError(f"{text!r}{hint}; give a number and a unit, like {DURATION_FORMS}")
    return float(match.group(1)) * _UNITS[match.group(2)]
