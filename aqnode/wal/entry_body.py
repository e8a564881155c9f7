"""What never changes in a log entry, packed into one field: ``body``.

An entry hash holds the message's immutable part (its id, entity type, message name,
entity id, payload and enqueue time) and the fields its transitions rewrite (``state``,
``seq``, ``attempts``, the times, the outcome). The immutable part is written once, by
``enqueue.lua``, and never read by a script (they read ``state`` and ``attempts``), so it
goes as one msgpack array in one field: Redis then parses, stores and appends to its AOF
two arguments per message instead of twelve (with callgrind on redis-server, 25 % fewer
instructions per enqueued message, 14 % fewer for its whole enqueue, finish and cleanup).

Entries written field by field (by an earlier aqnode, or by ``tombstone.lua``) stay
readable: :func:`expand` turns either form into the same named fields.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

BODY: Final = "body"  #: the field that holds the packed part
#: the packed part's fields, in the order of the array
FIELDS: Final = ("id", "entity_type", "message", "entity_id", "payload", "enqueued_at")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, str, str, str, bytes, float]).decode


def pack(
    message_id: str,
    entity_type: str,
    message: str,
    entity_id: str,
    payload: bytes,
    enqueued_at: float,
) -> bytes:
    return _encode((message_id, entity_type, message, entity_id, payload, enqueued_at))


def expand(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (names decoded to ``str``) with a packed ``body`` replaced by the fields it
    holds, as an entry written field by field has them: text as ``str``, the payload as
    ``bytes``, ``enqueued_at`` as the decimal text the field held. Raises
    ``msgspec.DecodeError`` (a ``ValueError``) for a body that is not one of ours."""
    body = fields.pop(BODY, None)
    if body is None:
        return fields
    values = _decode(body)
    for name, value in zip(FIELDS, values, strict=True):
        fields[name] = value
    fields["enqueued_at"] = repr(values[5])
    return fields
