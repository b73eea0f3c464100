"""Access log: one JSON line per request, cheap enough for the hot path.

The line is encoded by msgspec straight from a dict (no logging framework, no processor
chain) into a buffered binary stream that the gateway flushes about once a second.
Sampling keeps a fraction of lines when full logging would cost too much.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import BinaryIO

import msgspec

from shipyard.gateway.filters import Exchange


def trace_id(traceparent: bytes | None) -> str:
    """The trace id of a W3C ``traceparent`` header, or ''."""
    if traceparent is None or len(traceparent) < 55 or traceparent[2:3] != b"-":
        return ""
    return traceparent[3:35].decode("latin-1")


class AccessLog:
    """Writes a JSON line per completed exchange (``on_complete``) to ``stream``."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        sample: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._stream = stream
        self._write = stream.write
        self._sample = sample
        self._monotonic = monotonic
        self._wall = wall
        self._rng = rng
        self._encode = msgspec.json.Encoder().encode

    def on_complete(self, ex: Exchange) -> None:
        """Log ``ex`` (subject to sampling)."""
        if self._sample < 1.0 and self._rng() >= self._sample:
            return
        line = self._encode(
            {
                "ts": round(self._wall(), 3),
                "request_id": ex.request_id.decode("latin-1"),
                "frontend": ex.frontend,
                "route": ex.route,
                "method": ex.method.decode("latin-1"),
                "path": ex.path.decode("latin-1"),
                "status": ex.status,
                "bytes": ex.bytes_sent,
                "latency_ms": round((self._monotonic() - ex.start) * 1000.0, 3),
                "client": ex.client_ip,
                "consumer": ex.consumer,
                "upstream": ex.upstream,
                "trace_id": trace_id(ex.header_map.get(b"traceparent")),
            }
        )
        self._write(line + b"\n")

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._stream.flush()
