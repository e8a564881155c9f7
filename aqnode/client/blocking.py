"""A blocking native connection: what lets :class:`~aqnode.client.SyncClient` send one
call from the caller's own thread, with no hop to the background event loop.

A hop costs two thread wake-ups per call (the loop's, then the caller's), more than the
node's own work for a lone message. Here the calling thread writes the ``Send`` frame
and reads its ``Answer`` on a plain socket of its own (one per thread and node). The
asynchronous :class:`~aqnode.client.Client` stays in charge of everything else: it finds
the node's native endpoint, routes (an entity whose owner is another node, or with a
call in flight on the loop, goes the usual way) and learns from every answer.
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import struct
import threading
from typing import Any

import msgspec

from aqnode import errors
from aqnode.bus import Envelope, SendResult
from aqnode.client.tls import Tls
from aqnode.native import (
    CLIENT_FRAME_BYTES,
    PROTOCOL,
    TCP_SCHEME,
    UNIX_SCHEME,
    Answer,
    Goodbye,
    Hello,
    Send,
    ToClient,
    Welcome,
)
from aqnode.util.hostport import parse_host_port

OPEN_TIMEOUT_S = 5.0
_LENGTH = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[ToClient])


class NotSent(Exception):
    """The call was not written (no connection): send it another way."""


class BlockingNative:
    """One thread's connection to one node's native endpoint; not thread-safe."""

    def __init__(self, address: str, token: str | None, tls: Tls | None, server_id: str) -> None:
        self.address = address
        self._token = token
        self._tls = tls
        self._server_id = server_id  #: who the loop's connection found there
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)

    def call(self, envelope: Envelope, *, wait: bool, timeout_ms: int, limit: float) -> SendResult:
        """Send one call and block for its answer (at most ``limit`` seconds).

        NotSent if there is no connection (nothing was written); errors.Unavailable or
        errors.ReplyTimeout when it was written and no answer came (its fate unknown,
        like the loop's connection would say)."""
        sock = self._sock
        if sock is not None and _closed_by_peer(sock):
            self.close()  # the node restarted or dropped it while this thread was away
            sock = None
        if sock is None:
            sock = self._open()
        call_id = next(self._ids)
        try:
            sock.settimeout(limit)
            sock.sendall(_frame([Send(call_id, envelope, wait, timeout_ms)]))
        except OSError as exc:
            # Maybe a part went out before the error: the node reads no half frame as a
            # call (it closes that connection), so nothing was sent.
            self.close()
            raise NotSent(str(exc)) from None
        try:
            while True:
                for item in self._read_frame(sock):
                    if isinstance(item, Answer) and item.call_id == call_id:
                        return item.result
                    if isinstance(item, Goodbye):
                        raise errors.AqError.from_dict(item.error)
        except TimeoutError:
            self.close()
            if wait:
                raise errors.ReplyTimeout(
                    f"no answer from {self.address} within {limit:.1f}s; the message may still run"
                ) from None
            raise errors.Unavailable(
                f"{self.address} did not acknowledge within {limit:.0f}s; the message may or may "
                "not be enqueued: send it again with the same message_id to be sure"
            ) from None
        except (OSError, ProtocolFault) as exc:
            self.close()
            raise errors.Unavailable(
                f"the connection to {self.address} broke ({exc}) before the node answered; the "
                "message may or may not be enqueued: send it again with the same message_id"
            ) from None
        except errors.AqError:
            self.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            sock.close()

    def _open(self) -> socket.socket:
        try:
            sock = self._connect()
        except (OSError, ssl.SSLError) as exc:
            raise NotSent(str(exc)) from None
        try:
            sock.settimeout(OPEN_TIMEOUT_S)
            sock.sendall(_frame([Hello(PROTOCOL, self._token or "")]))
            items = self._read_frame(sock)
        except (OSError, ProtocolFault) as exc:
            sock.close()
            raise NotSent(str(exc)) from None
        first = items[0] if items else None
        if not isinstance(first, Welcome) or first.server_id != self._server_id:
            # Refused (a Goodbye), or another node behind the path: the loop's way says why.
            sock.close()
            raise NotSent(f"{self.address} did not welcome this connection")
        self._sock = sock
        return sock

    def _connect(self) -> socket.socket:
        if self.address.startswith(UNIX_SCHEME):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(OPEN_TIMEOUT_S)
            try:
                sock.connect(self.address[len(UNIX_SCHEME) :])
            except BaseException:
                sock.close()
                raise
            return sock
        host, port = parse_host_port(self.address[len(TCP_SCHEME) :])
        plain = socket.create_connection((host, port), timeout=OPEN_TIMEOUT_S)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            return plain
        try:
            return self._tls.ssl_context().wrap_socket(plain, server_hostname=host)
        except BaseException:
            plain.close()
            raise

    def _read_frame(self, sock: socket.socket) -> list[Any]:
        buf = self._buf
        while True:
            if len(buf) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buf)
                if length > CLIENT_FRAME_BYTES:
                    raise ProtocolFault(f"a frame of {length} bytes")
                end = _LENGTH.size + length
                if len(buf) >= end:
                    try:
                        items: list[Any] = _decoder.decode(bytes(buf[_LENGTH.size : end]))
                    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                        raise ProtocolFault(f"an undecodable frame: {exc}") from None
                    del buf[:end]
                    return items
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ProtocolFault("the node closed the connection")
            buf += chunk


class ProtocolFault(Exception):
    """The node closed, or sent what is not a frame of ours."""


def _closed_by_peer(sock: socket.socket) -> bool:
    """Between calls the node sends nothing: a readable socket is closed (or says
    Goodbye), and a call written to it would be lost with it."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _frame(items: list[Any]) -> bytes:
    body = _encoder.encode(items)
    return _LENGTH.pack(len(body)) + body


class ThreadConnections:
    """Each thread's :class:`BlockingNative` per native address; closes them all."""

    def __init__(self, token: str | None, tls: Tls | None) -> None:
        self._token = token
        self._tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[BlockingNative] = []
        self.closed = False

    def get(self, address: str, server_id: str) -> BlockingNative:
        mine: dict[str, BlockingNative] | None = getattr(self._local, "conns", None)
        if mine is None:
            mine = self._local.conns = {}
        conn = mine.get(address)
        if conn is None or conn._server_id != server_id:
            if conn is not None:
                conn.close()
            conn = mine[address] = BlockingNative(address, self._token, self._tls, server_id)
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's sockets (from the thread that closes the client, when no
        call is under way: a call racing this fails as a broken connection)."""
        self.closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
