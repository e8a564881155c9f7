"""Unit tests for aqnode.supervisor.metrics: rendering the text format and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import pytest

from aqnode.supervisor.metrics import (
    BATCH_BUCKETS,
    CONTENT_TYPE,
    DEFAULT_TIME_BUCKETS,
    Counter,
    Histogram,
    Labels,
    NodeMetrics,
    Registry,
    escape_label_value,
    format_value,
    parse_listen,
    serve_metrics,
)

T = TypeVar("T")

# One sample line of format 0.0.4: name, optional {label="value",...}, value.
_SAMPLE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(NaN|[+-]Inf|-?[0-9.e+-]+)"
)


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


# --- rendering -------------------------------------------------------------------------------


def test_counter_renders_help_type_and_totals() -> None:
    reg = Registry()
    c = reg.counter("jobs_total", "Jobs done.", ("kind",))
    c.inc(("a",))
    c.inc(("a",), 2)
    c.inc(("b",), 0.5)
    assert reg.render() == (
        "# HELP jobs_total Jobs done.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{kind="a"} 3\n'
        'jobs_total{kind="b"} 0.5\n'
    )
    assert c.value(("a",)) == 3
    assert c.value(("zzz",)) == 0


def test_unlabelled_metrics_render_zero_before_any_event() -> None:
    reg = Registry()
    reg.counter("c_total", "c", ())
    reg.histogram("h", "h", (), (1,))
    assert _samples(reg.render()) == [
        "c_total 0",
        'h_bucket{le="1"} 0',
        'h_bucket{le="+Inf"} 0',
        "h_sum 0",
        "h_count 0",
    ]


def test_counter_rejects_wrong_labels_and_decrease() -> None:
    c = Counter("x_total", "x", ("a", "b"))
    with pytest.raises(ValueError, match="2 string label value"):
        c.inc(("only-one",))
    with pytest.raises(ValueError, match="string label"):
        c.inc(("a", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(("a", "b"), -1)


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    reg = Registry()
    h = reg.histogram("wait_seconds", "Wait.", ("t",), (0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 20):  # 0.1 sits on a bound: le is inclusive
        h.observe(("x",), value)
    assert _samples(reg.render()) == [
        'wait_seconds_bucket{t="x",le="0.1"} 2',
        'wait_seconds_bucket{t="x",le="1"} 3',
        'wait_seconds_bucket{t="x",le="10"} 3',
        'wait_seconds_bucket{t="x",le="+Inf"} 4',
        'wait_seconds_sum{t="x"} 20.65',
        'wait_seconds_count{t="x"} 4',
    ]
    assert "# TYPE wait_seconds histogram" in reg.render()


def test_observe_many_matches_repeated_observe() -> None:
    values = [0.0001, 0.003, 0.003, 0.2, 7.0, 99.0]
    one, many = Registry(), Registry()
    h1 = one.histogram("h", "h", ("k",), DEFAULT_TIME_BUCKETS)
    h2 = many.histogram("h", "h", ("k",), DEFAULT_TIME_BUCKETS)
    for v in values:
        h1.observe(("a",), v)
    h2.observe_many(("a",), iter(values))
    assert one.render() == many.render()


@pytest.mark.parametrize(
    "buckets", [(), (1, 1), (2, 1), (1, float("inf")), (float("nan"),)], ids=repr
)
def test_histogram_rejects_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "h", (), buckets)


def test_histogram_rejects_le_label() -> None:
    with pytest.raises(ValueError, match="'le'"):
        Histogram("h", "h", ("le",), (1,))


def test_gauge_set_and_callback_read_at_render_time() -> None:
    reg = Registry()
    depth = {"0": 3.0, "1": 0.0}
    reg.gauge("depth", "Queue depth.", ("shard",), lambda: [((s,), d) for s, d in depth.items()])
    live = reg.gauge("live", "Live.", ())
    live.set((), 7)
    assert _samples(reg.render()) == ['depth{shard="0"} 3', 'depth{shard="1"} 0', "live 7"]
    depth["0"] = 5.5
    assert 'depth{shard="0"} 5.5' in reg.render()
    with pytest.raises(TypeError, match="callback"):
        reg.gauge("g2", "g", (), lambda: [((), 1.0)]).set((), 2)


def test_failing_gauge_callback_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Iterable[tuple[Labels, float]]:
        raise RuntimeError("boom")

    reg = Registry()
    reg.gauge("bad", "Bad.", (), broken)
    reg.gauge("wrong_arity", "Wrong.", ("a",), lambda: [(("x", "y"), 1.0)])
    reg.counter("ok_total", "Ok.", ())
    with caplog.at_level(logging.ERROR, logger="aqnode.metrics"):
        text = reg.render()
    assert _samples(text) == ["ok_total 0"]
    assert "# TYPE bad gauge" in text
    assert sum("callback failed" in r.getMessage() for r in caplog.records) == 2


def test_label_values_and_help_are_escaped() -> None:
    reg = Registry()
    reg.counter("e_total", 'Back\\slash "quoted"\nsecond line', ("v",)).inc(('a\\b"c\nd',))
    lines = reg.render().splitlines()
    assert lines[0] == '# HELP e_total Back\\\\slash "quoted"\\nsecond line'
    assert lines[2] == 'e_total{v="a\\\\b\\"c\\nd"} 1'
    assert escape_label_value("plain") == "plain"


def test_metrics_and_label_sets_are_sorted() -> None:
    reg = Registry()
    b = reg.counter("b_total", "b", ("x",))
    reg.gauge("a", "a", (), lambda: [((), 1.0)])
    b.inc(("z",))
    b.inc(("m",))
    assert _samples(reg.render()) == ["a 1", 'b_total{x="m"} 1', 'b_total{x="z"} 1']


def test_registry_rejects_duplicates_and_bad_names() -> None:
    reg = Registry()
    reg.counter("dup_total", "d", ())
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("dup_total", "d", ())
    with pytest.raises(ValueError, match="metric name"):
        reg.counter("bad-name", "x", ())
    with pytest.raises(ValueError, match="label name"):
        reg.counter("x_total", "x", ("__reserved",))
    with pytest.raises(ValueError, match="Duplicate label"):
        reg.counter("y_total", "y", ("a", "a"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (3.0, "3"),
        (-2.0, "-2"),
        (0.25, "0.25"),
        (0.0005, "0.0005"),
        (1e-05, "1e-05"),
        (1e20, "1e+20"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
    assert text in ("+Inf", "-Inf", "NaN") or float(text) == value


def test_node_metrics_names_and_gauges() -> None:
    m = NodeMetrics()
    m.enqueued.inc(("bank",))
    m.completed.inc(("bank",))
    m.failed.inc(("bank",))
    m.dead_lettered.inc(("bank", "exhausted"))
    m.rejected.inc(("bank", "OVERLOADED"))
    m.queue_wait.observe(("bank",), 0.002)
    m.handler_time.observe_many(("bank",), [0.01, 0.3])
    m.commit_batch.observe(("finish",), 17)
    m.add_gauge("aqnode_workers", "Workers.", ("shard",), lambda: [(("0",), 4.0)])
    text = m.render()
    for name in (
        "aqnode_messages_enqueued_total",
        "aqnode_messages_completed_total",
        "aqnode_messages_failed_total",
        "aqnode_messages_dead_lettered_total",
        "aqnode_messages_rejected_total",
        "aqnode_queue_wait_seconds",
        "aqnode_handler_seconds",
        "aqnode_wal_commit_batch_size",
        "aqnode_workers",
    ):
        assert f"# TYPE {name} " in text
    assert m.commit_batch.buckets == BATCH_BUCKETS
    assert m.queue_wait.buckets == DEFAULT_TIME_BUCKETS
    assert 'aqnode_wal_commit_batch_size_bucket{kind="finish",le="20"} 1' in text
    assert 'aqnode_messages_rejected_total{entity_type="bank",code="OVERLOADED"} 1' in text
    assert 'aqnode_workers{shard="0"} 4' in text
    for line in _samples(text):
        assert _SAMPLE.fullmatch(line), line


def test_hot_path_does_not_allocate_per_call() -> None:
    c = Counter("c_total", "c", ("k",))
    h = Histogram("h", "h", ("k",), DEFAULT_TIME_BUCKETS)
    labels = ("a",)
    c.inc(labels)
    h.observe(labels, 0.01)  # first calls create the entries
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            c.inc(labels)
            h.observe(labels, 0.01)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024, f"{grown} bytes retained by 10,000 inc+observe calls"


# --- HTTP endpoint ---------------------------------------------------------------------------


def _run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return asyncio.run(main())


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


async def _raw(port: int, data: bytes, eof: bool = False) -> bytes:
    """Send `data` as is (then end our side if `eof`) and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def test_http_metrics_index_404_405_and_head() -> None:
    reg = Registry()
    reg.counter("hits_total", "Hits.", ("k",)).inc(("a",))

    async def scenario() -> None:
        server = await serve_metrics("127.0.0.1:0", reg.render)
        base = f"http://127.0.0.1:{_port(server)}"
        try:
            status, headers, body = await asyncio.to_thread(_get, base + "/metrics")
            assert status == 200
            assert headers["Content-Type"] == CONTENT_TYPE
            assert headers["Content-Length"] == str(len(body))
            assert headers["Connection"] == "close"
            assert body.decode() == reg.render()

            status, _, body = await asyncio.to_thread(_get, base + "/metrics?x=1")
            assert (status, body.decode()) == (200, reg.render())
            status, _, body = await asyncio.to_thread(_get, base + "/")
            assert status == 200 and b"/metrics" in body
            status, _, _ = await asyncio.to_thread(_get, base + "/nope")
            assert status == 404
            status, headers, _ = await asyncio.to_thread(_get, base + "/metrics", "POST")
            assert status == 405 and headers["Allow"] == "GET, HEAD"
            status, headers, body = await asyncio.to_thread(_get, base + "/metrics", "HEAD")
            assert (status, body) == (200, b"")
            assert headers["Content-Length"] == str(len(reg.render().encode()))
        finally:
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_http_malformed_oversized_slow_and_failing_render(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> str:
        raise RuntimeError("render broke")

    async def scenario() -> None:
        server = await serve_metrics("127.0.0.1:0", broken, read_timeout=0.2, max_head_bytes=1024)
        port = _port(server)
        try:
            reply = await _raw(port, b"NONSENSE\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            reply = await _raw(port, b"GET /metrics HTTP/2.0\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 400 ")
            reply = await _raw(port, b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 431 ")
            reply = await _raw(port, b"GET /metrics HTTP/1.1\r\n")  # never ends its head
            assert reply.startswith(b"HTTP/1.1 408 ")
            # A client that leaves mid-head gets no reply, and nothing is logged.
            assert await _raw(port, b"GET /metrics HTTP/1.1\r\n", eof=True) == b""
            reply = await _raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 500 ")
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.ERROR, logger="aqnode.metrics"):
        _run(scenario)
    assert [r.getMessage() for r in caplog.records] == ["Rendering metrics failed"]


def test_port_taken_raises_clear_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=f"Cannot serve metrics on {listen}"):
            _run(lambda: serve_metrics(listen, lambda: ""))


def test_ipv6_listen_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario() -> None:
        try:
            server = await serve_metrics("[::1]:0", lambda: "x 1\n")
        except OSError:
            pytest.skip("::1 not available")
        try:
            reply = await _raw_v6(_port(server))
            assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"x 1\n")
        finally:
            server.close()
            await server.wait_closed()

    _run(scenario)


async def _raw_v6(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("::1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:0", ("::1", 0)), ("h:1", ("h", 1))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9100", ":9100", "::1:9100", "[::1]9100", "h:x", "h:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)
