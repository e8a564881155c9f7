"""Metrics for the supervisor: a small registry and a Prometheus text endpoint (SPEC 12).

Threading model: everything here runs on the supervisor's event loop. `inc`, `observe` and
`set` are plain dict and list updates with no lock, so they are not safe to call from other
threads. The hot path is one dict lookup keyed by the caller's label tuple; labels are
checked only the first time a tuple is seen, and rendering (once per scrape) does the
formatting, sorting and escaping.

The HTTP endpoint answers one request per connection and closes it. The request head is
read with a size cap and a deadline, so a slow or hostile client costs one small buffer for
a few seconds and never an unbounded wait.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from itertools import pairwise
from typing import Final, NamedTuple, TypeVar

from aqnode.util.hostport import parse_host_port

log = logging.getLogger("aqnode.metrics")

Labels = tuple[str, ...]
GaugeCallback = Callable[[], Iterable[tuple[Labels, float]]]

#: seconds; latency buckets from half a millisecond to ten seconds
DEFAULT_TIME_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: counts; transitions per write-ahead-log commit
BATCH_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

MAX_HEAD_BYTES: Final = 16 * 1024  #: bytes; a request head larger than this gets 431
READ_TIMEOUT_S: Final = 5.0  #: seconds to receive the whole request head
WRITE_TIMEOUT_S: Final = 5.0  #: seconds to hand the whole response to the client
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MAX_EXACT_INT = 1e15  # beyond this a float's integer digits are not all meaningful


# --- formatting ------------------------------------------------------------------------------


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it (Go's ParseFloat): 3, 0.25, 1e-05, +Inf, NaN."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < _MAX_EXACT_INT:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    """Backslash, double quote and newline escaped, as format 0.0.4 requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # HELP escapes backslash and newline only; a quote is literal there.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Labels, extra: str = "") -> str:
    """`{a="x",b="y"}` (with `extra`, e.g. `le="0.5"`, last); empty if there are no labels."""
    parts = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


# --- metrics ---------------------------------------------------------------------------------


class _Metric:
    """Name, help and label names, validated once; subclasses add values and `_samples`."""

    kind: str = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"Invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"Invalid label name {label!r} in metric {name!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"Duplicate label names in metric {name!r}: {list(labels)}")
        self.name = name
        self.help = help
        self.label_names: Labels = tuple(labels)

    def _check_labels(self, labels: Labels) -> None:
        # Called once per new label tuple, never on the hot path for a known one.
        if len(labels) != len(self.label_names) or not all(isinstance(v, str) for v in labels):
            raise ValueError(
                f"Metric {self.name!r} takes {len(self.label_names)} string label value(s) "
                f"{self.label_names}, got {labels!r}"
            )

    def render(self, out: list[str]) -> None:
        """Append this metric's HELP, TYPE and sample lines (each without newline) to `out`."""
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        self._samples(out)

    def _samples(self, out: list[str]) -> None:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonic total per label tuple."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {}
        if not self.label_names:
            self._values[()] = 0  # an unlabelled counter shows 0 before its first event

    def inc(self, labels: Labels, value: float = 1) -> None:
        if value < 0:
            raise ValueError(f"Counter {self.name!r} cannot decrease (inc by {value})")
        values = self._values
        if labels in values:
            values[labels] += value
        else:
            self._check_labels(labels)
            values[labels] = value

    def value(self, labels: Labels) -> float:
        """The current total for `labels` (0 if never incremented); for tests and status."""
        return self._values.get(labels, 0)

    def _samples(self, out: list[str]) -> None:
        for labels in sorted(self._values):
            text = _label_text(self.label_names, labels)
            out.append(f"{self.name}{text} {format_value(self._values[labels])}")


class _HistogramState:
    """One label tuple's bucket counts (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)
        self.sum = 0.0


class Histogram(_Metric):
    """Fixed upper bounds (`le`); a value equal to a bound falls in that bound's bucket."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help, labels)
        if "le" in self.label_names:
            raise ValueError(f"Histogram {name!r} cannot have a label named 'le'")
        bounds = tuple(float(b) for b in buckets)
        if not bounds or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"Histogram {name!r} needs finite buckets (+Inf is implied)")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"Histogram {name!r} buckets must increase strictly: {bounds}")
        self.buckets = bounds
        self._le = [f'le="{format_value(b)}"' for b in bounds] + ['le="+Inf"']
        self._states: dict[Labels, _HistogramState] = {}
        if not self.label_names:
            self._states[()] = _HistogramState(len(bounds))

    def observe(self, labels: Labels, value: float) -> None:
        state = self._states.get(labels)
        if state is None:
            state = self._new_state(labels)
        state.counts[bisect_left(self.buckets, value)] += 1
        state.sum += value

    def observe_many(self, labels: Labels, values: Iterable[float]) -> None:
        """Like `observe` for each value, with one lookup for the whole batch."""
        state = self._states.get(labels)
        if state is None:
            state = self._new_state(labels)
        counts, bounds, total = state.counts, self.buckets, 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        state.sum += total

    def _new_state(self, labels: Labels) -> _HistogramState:
        self._check_labels(labels)
        state = self._states[labels] = _HistogramState(len(self.buckets))
        return state

    def _samples(self, out: list[str]) -> None:
        name, names = self.name, self.label_names
        for labels in sorted(self._states):
            state = self._states[labels]
            cumulative = 0
            for le, count in zip(self._le, state.counts, strict=True):
                cumulative += count
                out.append(f"{name}_bucket{_label_text(names, labels, le)} {cumulative}")
            text = _label_text(names, labels)
            out.append(f"{name}_sum{text} {format_value(state.sum)}")
            out.append(f"{name}_count{text} {cumulative}")


class Gauge(_Metric):
    """A value that goes up and down: set by the caller, or read from `callback` at render."""

    kind = "gauge"

    def __init__(
        self, name: str, help: str, labels: Sequence[str], callback: GaugeCallback | None = None
    ) -> None:
        super().__init__(name, help, labels)
        self.callback = callback
        self._values: dict[Labels, float] = {}

    def set(self, labels: Labels, value: float) -> None:
        if self.callback is not None:
            raise TypeError(f"Gauge {self.name!r} reads a callback; it cannot be set")
        if labels not in self._values:
            self._check_labels(labels)
        self._values[labels] = value

    def _current(self) -> dict[Labels, float]:
        if self.callback is None:
            return self._values
        samples = dict(self.callback())
        for labels in samples:
            self._check_labels(labels)
        return samples

    def _samples(self, out: list[str]) -> None:
        try:
            samples = self._current()
        except Exception:
            # One broken callback must not take the whole scrape down: log, show no samples.
            log.exception("Gauge %s: callback failed; rendering it without samples", self.name)
            return
        for labels in sorted(samples):
            text = _label_text(self.label_names, labels)
            out.append(f"{self.name}{text} {format_value(samples[labels])}")


class CountedElsewhere(Gauge):
    """A monotonic total kept by its owner (a plain int) and read at each scrape."""

    kind = "counter"


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """Metrics by unique name; `render` lists them sorted by name."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help: str, labels: Sequence[str]) -> Counter:
        return self._add(Counter(name, help, labels))

    def histogram(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    def gauge(
        self, name: str, help: str, labels: Sequence[str], callback: GaugeCallback | None = None
    ) -> Gauge:
        return self._add(Gauge(name, help, labels, callback))

    def _add(self, metric: _M) -> _M:
        if metric.name in self._metrics:
            raise ValueError(f"Metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """The Prometheus text exposition format 0.0.4, ending with a newline."""
        out: list[str] = []
        for name in sorted(self._metrics):
            self._metrics[name].render(out)
        out.append("")
        return "\n".join(out)


class NodeMetrics:
    """The node's own metrics; the attribute names are what the core calls."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r, et = self.registry, ("entity_type",)
        self.enqueued = r.counter("aqnode_messages_enqueued_total", "Messages accepted.", et)
        self.completed = r.counter(
            "aqnode_messages_completed_total", "Messages whose handler succeeded.", et
        )
        self.failed = r.counter(
            "aqnode_messages_failed_total", "Messages that ended failed (any reason).", et
        )
        self.dead_lettered = r.counter(
            "aqnode_messages_dead_lettered_total",
            "Messages moved to the dead-letter list, by reason.",
            ("entity_type", "reason"),
        )
        self.rejected = r.counter(
            "aqnode_messages_rejected_total",
            "Messages refused before enqueue, by error code.",
            ("entity_type", "code"),
        )
        self.queue_wait = r.histogram(
            "aqnode_queue_wait_seconds",
            "Time from enqueue to handler start.",
            et,
            DEFAULT_TIME_BUCKETS,
        )
        self.handler_time = r.histogram(
            "aqnode_handler_seconds", "Handler run time.", et, DEFAULT_TIME_BUCKETS
        )
        self.commit_batch = r.histogram(
            "aqnode_wal_commit_batch_size",
            "Transitions in one write-ahead-log commit, by kind.",
            ("kind",),
            BATCH_BUCKETS,
        )

    def add_gauge(
        self, name: str, help: str, labels: Sequence[str], callback: GaugeCallback
    ) -> Gauge:
        """Register a gauge read from `callback` at each scrape (workers, queue depth, ...)."""
        return self.registry.gauge(name, help, labels, callback)

    def add_total(
        self, name: str, help: str, labels: Sequence[str], callback: GaugeCallback
    ) -> Gauge:
        """Register a counter whose totals `callback` reads from where they are kept."""
        return self.registry._add(CountedElsewhere(name, help, labels, callback))

    def render(self) -> str:
        return self.registry.render()


# --- HTTP endpoint ---------------------------------------------------------------------------


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    extra_headers: str = ""


_INDEX = _Response(200, b"aqnode metrics: GET /metrics\n")
_NOT_FOUND = _Response(404, b"Not found; metrics are at /metrics\n")
_NOT_ALLOWED = _Response(405, b"Method not allowed\n", extra_headers="Allow: GET, HEAD\r\n")
_BAD_REQUEST = _Response(400, b"Bad request\n")


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 host in brackets) to (host, port); port 0 picks a free one."""
    return parse_host_port(listen, allow_zero=True)


async def serve_metrics(
    listen: str,
    render: Callable[[], str],
    *,
    read_timeout: float = READ_TIMEOUT_S,
    max_head_bytes: int = MAX_HEAD_BYTES,
) -> asyncio.Server:
    """Serve `render()` at GET /metrics on `listen`; the caller closes the returned server.

    Raises ValueError for a malformed address and `MetricsListenError` (an OSError naming
    the key and the address) if it cannot bind.
    """
    host, port = parse_listen(listen)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, render, read_timeout)

    try:
        # `limit` caps the StreamReader buffer, so readuntil fails past it instead of growing.
        return await asyncio.start_server(handle, host, port, limit=max_head_bytes)
    except OSError as exc:
        # asyncio's strerror repeats the address; the errno's own text says it shorter
        # (a getaddrinfo error has a negative errno and a strerror of its own)
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else None
        reason = reason or exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            hint = "is another node (or program) using that port? Choose another port for"
        else:
            hint = "change"
        raise MetricsListenError(
            exc.errno,
            f"Cannot serve metrics on {listen} (metrics_listen): {reason}; {hint} "
            "`metrics_listen` in the config",
        ) from exc


class MetricsListenError(OSError):
    """`serve_metrics` could not bind: ``str()`` is the message alone, naming the key
    and the address (no ``[Errno N]`` in front), as `aqnode serve` prints it."""

    def __str__(self) -> str:
        return str(self.strerror)


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    render: Callable[[], str],
    read_timeout: float,
) -> None:
    try:
        answer = await _answer(reader, render, read_timeout)
        if answer is not None:
            response, head_only = answer
            await asyncio.wait_for(_send(writer, response, head_only), WRITE_TIMEOUT_S)
    except (ConnectionError, TimeoutError) as exc:
        log.debug("Metrics client went away: %r", exc)
    except Exception:
        log.exception("Metrics request failed")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception as exc:  # the peer may have reset; the socket is closed either way
            log.debug("Metrics connection close: %r", exc)


async def _answer(
    reader: asyncio.StreamReader, render: Callable[[], str], read_timeout: float
) -> tuple[_Response, bool] | None:
    """The response and whether to omit its body (HEAD); None if the client left early."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        return _Response(431, b"Request head too large\n"), False
    except TimeoutError:
        return _Response(408, b"Request head not received in time\n"), False
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
        return _BAD_REQUEST, False
    method, path = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _NOT_ALLOWED, False
    return _route(path, render), method == b"HEAD"


def _route(path: bytes, render: Callable[[], str]) -> _Response:
    if path == b"/":
        return _INDEX
    if path != b"/metrics":
        return _NOT_FOUND
    try:
        body = render().encode()
    except Exception:
        log.exception("Rendering metrics failed")
        return _Response(500, b"Rendering metrics failed; see the node's log\n")
    return _Response(200, body, CONTENT_TYPE)


async def _send(writer: asyncio.StreamWriter, response: _Response, head_only: bool) -> None:
    status = HTTPStatus(response.status)
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"{response.extra_headers}"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("ascii") if head_only else head.encode("ascii") + response.body)
    await writer.drain()
