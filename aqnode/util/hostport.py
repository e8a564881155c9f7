"""The one HOST:PORT parser (IPv6 hosts in brackets), for listen, advertised and sentinels."""

from __future__ import annotations

MAX_PORT = 65535


def parse_host_port(
    text: str, *, default_port: int | None = None, allow_zero: bool = False
) -> tuple[str, int]:
    """``"h:p"`` or ``"[v6]:p"`` to ``(host, port)``; ValueError with a sentence otherwise.

    ``default_port`` allows a bare host; ``allow_zero`` allows port 0 ("pick a free one").
    """
    low = 0 if allow_zero else 1
    expected = f"Expected HOST:PORT with a port from {low} to {MAX_PORT}, got {text!r}"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if sep and not port and default_port is not None:
            return host, default_port
        if not sep or not port.startswith(":"):
            raise ValueError(expected)
        port = port[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            if default_port is not None and text and ":" not in text:
                return text, default_port
            raise ValueError(expected)
        if ":" in host:
            raise ValueError(f"{expected} (write an IPv6 host in brackets: [::1]:50051)")
    if not host or any(c.isspace() for c in host):
        raise ValueError(expected)
    if not port.isdigit() or not low <= int(port) <= MAX_PORT:
        raise ValueError(expected)
    return host, int(port)
