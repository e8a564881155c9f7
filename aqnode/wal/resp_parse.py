"""An incremental RESP2/RESP3 reply parser for the log's pipelined connection.

redis-py reads a reply line by line through its StreamReader (an await per line, a
time-out wrapper per reply): about a quarter of the supervisor's time per lone message
went there. Here the reader takes whatever bytes arrived in one read and :meth:`feed`
returns every reply they complete, in order; a reply cut between two reads is kept and
finished by the next. Error replies become redis-py's exception objects (the same
classes the rest of ``wal/`` catches); push messages (RESP3 ``>``, never asked for by
the log) are dropped, so they cannot shift replies onto the wrong commit.
"""

from __future__ import annotations

from typing import Any

from aqnode.wal.redis_errors import error_reply


class ReplyProtocolError(Exception):
    """Bytes that are not RESP: the connection cannot be trusted any more."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


_INCOMPLETE = _Incomplete()
_PUSH = object()  #: a parsed push message: not a reply


class ReplyParser:
    """Feed it the bytes read from the socket; it hands back the whole replies."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        replies: list[Any] = []
        pos = 0
        end = len(buf)
        while pos < end:
            try:
                value, pos_after = self._value(buf, pos)
            except _Incomplete:
                break
            except ValueError as exc:  # a length or a number that is not one
                raise ReplyProtocolError(f"not a RESP reply: {exc}") from None
            pos = pos_after
            if value is not _PUSH:
                replies.append(value)
        del buf[:pos]
        return replies

    @property
    def buffered(self) -> int:
        """Bytes of a reply not yet complete."""
        return len(self._buf)

    def _line(self, buf: bytearray, pos: int) -> tuple[bytes, int]:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise _INCOMPLETE
        return bytes(buf[pos + 1 : eol]), eol + 2

    def _value(self, buf: bytearray, pos: int) -> tuple[Any, int]:
        if pos >= len(buf):
            raise _INCOMPLETE
        kind = buf[pos]
        line, pos = self._line(buf, pos)
        if kind == 58:  # ':' integer
            return int(line), pos
        if kind == 36 or kind == 61:  # '$' bulk string, '=' verbatim string
            length = int(line)
            if length < 0:
                return None, pos
            if len(buf) < pos + length + 2:
                raise _INCOMPLETE
            value = bytes(buf[pos : pos + length])
            if kind == 61:
                value = value[4:]  # 'txt:' / 'mkd:'
            return value, pos + length + 2
        if kind == 42 or kind == 126 or kind == 62:  # '*' array, '~' set, '>' push
            count = int(line)
            if count < 0:
                return None, pos
            items: list[Any] = []
            append = items.append
            for _ in range(count):
                # Inline the two kinds a script's reply array holds (a commit's replies are
                # one entry per message): integers and bulk strings.
                head = buf[pos] if pos < len(buf) else -1
                if head == 58:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        raise _INCOMPLETE
                    append(int(buf[pos + 1 : eol]))
                    pos = eol + 2
                elif head == 36:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        raise _INCOMPLETE
                    length = int(buf[pos + 1 : eol])
                    pos = eol + 2
                    if length < 0:
                        append(None)
                        continue
                    if len(buf) < pos + length + 2:
                        raise _INCOMPLETE
                    append(bytes(buf[pos : pos + length]))
                    pos += length + 2
                else:
                    item, pos = self._value(buf, pos)
                    append(item)
            return (_PUSH if kind == 62 else items), pos
        if kind == 37 or kind == 124:  # '%' map, '|' attribute (then the reply it annotates)
            pairs: dict[Any, Any] = {}
            for _ in range(int(line)):
                key, pos = self._value(buf, pos)
                pairs[key if not isinstance(key, list) else tuple(key)], pos = self._value(buf, pos)
            if kind == 124:
                return self._value(buf, pos)
            return pairs, pos
        if kind == 43:  # '+' simple string
            return line, pos
        if kind == 45 or kind == 33:  # '-' error, '!' blob error
            if kind == 33:
                length = int(line)
                if len(buf) < pos + length + 2:
                    raise _INCOMPLETE
                line, pos = bytes(buf[pos : pos + length]), pos + length + 2
            return error_reply(line.decode("utf-8", "replace")), pos
        if kind == 95:  # '_' null
            return None, pos
        if kind == 35:  # '#' boolean
            return line == b"t", pos
        if kind == 44:  # ',' double
            return float(line), pos
        if kind == 40:  # '(' big number
            return int(line), pos
        raise ReplyProtocolError(f"not a RESP reply: type byte {bytes([kind])!r}")
