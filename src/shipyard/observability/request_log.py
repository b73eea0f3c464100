"""Request log: one JSON line per request, encoded by msgspec straight from a dict.

No logging framework and no processor chain on the hot path: the line is built and
written in one go. Fields: ``ts``, ``service``, ``request_id``, ``method``, ``route``,
``path``, ``status``, ``latency_ms``, ``bytes``, ``trace_id``, ``span_id``.
"""

from __future__ import annotations

import sys
from typing import TextIO

import msgspec


class RequestLog:
    """Writes request lines to ``stream`` (default: the process's stderr at write time,
    so test capture and redirection both see it)."""

    __slots__ = ("_encode", "service", "stream")

    def __init__(self, service: str = "", *, stream: TextIO | None = None) -> None:
        self.service = service
        self.stream = stream
        self._encode = msgspec.json.Encoder().encode

    def write(
        self,
        *,
        ts: float,
        request_id: str,
        method: str,
        route: str,
        path: str,
        status: int,
        latency_ms: float,
        size: int,
        trace_id: str,
        span_id: str,
    ) -> None:
        """Write one line for a finished request."""
        line = self._encode(
            {
                "ts": round(ts, 3),
                "service": self.service,
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "latency_ms": round(latency_ms, 3),
                "bytes": size,
                "trace_id": trace_id,
                "span_id": span_id,
            }
        )
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(line.decode() + "\n")
