"""The access log: batched JSON lines, each complete, none lost at shutdown."""

from __future__ import annotations

import io
import json

from shipyard.gateway import AccessLog, Exchange

from .conftest import Upstream, request, running


def exchange(n: int) -> Exchange:
    ex = Exchange(
        b"GET", f"/items/{n}".encode(), b"", "1.1", [(b"host", b"a")], b"", "10.0.0.1", True, 1.0
    )
    ex.request_id = f"req-{n}".encode()
    ex.frontend, ex.route, ex.status, ex.bytes_sent = "web", "items", 200, 120
    return ex


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_wait_for_a_full_batch_then_are_written_whole_in_order() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, batch=3, monotonic=lambda: 1.5, wall=lambda: 1_700_000_000.1234)
    for n in range(2):
        log.on_complete(exchange(n))
    assert stream.getvalue() == b""
    log.on_complete(exchange(2))
    assert [line["request_id"] for line in lines(stream)] == ["req-0", "req-1", "req-2"]
    assert stream.getvalue().endswith(b"\n")
    first = lines(stream)[0]
    assert first["ts"] == 1_700_000_000.123
    assert first["latency_ms"] == 500.0
    assert (first["path"], first["status"], first["client"]) == ("/items/0", 200, "10.0.0.1")


def test_flush_writes_a_partial_batch() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, batch=100)
    log.on_complete(exchange(7))
    log.flush()
    assert [line["request_id"] for line in lines(stream)] == ["req-7"]
    log.flush()  # nothing waiting: nothing written twice
    assert len(lines(stream)) == 1


async def test_lines_still_waiting_are_written_when_the_gateway_closes(upstream: Upstream) -> None:
    log = io.BytesIO()
    yaml = f"""
listen: 127.0.0.1:0
frontends:
  web:
    routes: [{{name: app, prefix: /, upstream: {upstream.url}}}]
"""
    async with running(yaml, access_log=log) as gw:
        # Fewer lines than a batch: they wait for the flush timer or the close.
        for n in range(5):
            await request(gw.address("web")[1], path=f"/n{n}")
    assert [line["path"] for line in lines(log)] == [f"/n{n}" for n in range(5)]
