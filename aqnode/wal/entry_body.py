"""The part of a log entry that never changes and is small, packed into one field: ``body``.

An entry hash holds the message's immutable part (its id, entity type, message name,
entity id, payload and enqueue time) and the fields its transitions rewrite (``state``,
``seq``, ``attempts``, the times, the outcome). No script reads the immutable part, so
the entity type, message name, entity id and enqueue time go as one msgpack array in one
field; the payload keeps a field of its own, and the id is not stored at all (it is in
the entry's key, and every reader knows it): enqueue.lua's HSET takes 5-6 field pairs
instead of 10-11. With callgrind on redis-server, a message enqueued in a batch of 100
costs Redis 74.7k instructions instead of 94.0k. Kept apart, each value stays small:
Redis keeps a hash whose values are all under ``hash-max-listpack-value`` (64 bytes by
default) in its compact encoding, which one value holding the payload too would lose
for any payload over a few bytes (a finished entry with a 17-byte payload: 540 B of
Redis memory, 635 B field by field, 995 B with the payload packed in).

Entries written field by field (by an earlier aqnode, or by ``tombstone.lua``) stay
readable: :func:`expand` turns either form into the same named fields.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

BODY: Final = "body"  #: the field that holds the packed part
#: the packed part's fields, in the order of the array
FIELDS: Final = ("entity_type", "message", "entity_id", "enqueued_at")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, str, str, float]).decode


def pack(entity_type: str, message: str, entity_id: str, enqueued_at: float) -> bytes:
    return _encode((entity_type, message, entity_id, enqueued_at))


def expand(fields: dict[str, Any], message_id: str) -> dict[str, Any]:
    """``fields`` of entry ``message_id`` (names decoded to ``str``) with a packed ``body``
    replaced by the fields it holds, and the id, as an entry written field by field has
    them: text as ``str``, ``enqueued_at`` as the decimal text the field held. Raises
    ``msgspec.DecodeError`` (a ``ValueError``) for a body that is not one of ours."""
    body = fields.pop(BODY, None)
    fields.setdefault("id", message_id)
    if body is None:
        return fields
    entity_type, message, entity_id, enqueued_at = _decode(body)
    fields["entity_type"] = entity_type
    fields["message"] = message
    fields["entity_id"] = entity_id
    fields["enqueued_at"] = repr(enqueued_at)
    return fields
