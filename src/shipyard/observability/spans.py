"""Finished server spans, kept in a small in-process ring buffer.

OpenTelemetry is not a dependency: a :class:`Span` is plain data and the
:class:`TraceRecorder` publishes each one on ``events``, so an OTel (or any other)
exporter plugs in by subscribing — ``recorder.events.subscribe(exporter.export)``.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shipyard.core import EventPublisher, validation

SpanKind = Literal["server", "client", "internal"]


@dataclass(frozen=True, slots=True)
class Span:
    """One finished operation of a trace.

    ``start`` is wall time (seconds since the epoch); ``duration`` is in seconds;
    ``parent_id`` is ``None`` for a trace's root span; ``status`` is the HTTP status
    (0 when the app failed before answering).
    """

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    duration: float
    status: int
    kind: SpanKind = "server"
    service: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True for 5xx answers and for requests that got no answer at all."""
        return self.status == 0 or self.status >= 500


class SpanExporter(Protocol):
    """Where finished spans go besides the ring buffer (e.g. an OTLP exporter)."""

    def export(self, span: Span) -> None:
        """Take one finished span; must not block (queue it and ship in the background)."""


class TraceRecorder:
    """The last ``capacity`` finished spans of this process, oldest first.

    Recording appends to a bounded deque (old spans fall off); listeners on ``events``
    see every span as it finishes — the dashboard and exporters read from here.
    """

    __slots__ = ("_spans", "capacity", "events")

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = validation.at_least("capacity", capacity, 1)
        self._spans: collections.deque[Span] = collections.deque(maxlen=self.capacity)
        self.events: EventPublisher[Span] = EventPublisher("trace-recorder")

    def record(self, span: Span) -> None:
        """Keep ``span`` and hand it to the listeners."""
        self._spans.append(span)
        if self.events.has_listeners:
            self.events.emit(span)

    def add_exporter(self, exporter: SpanExporter) -> None:
        """Send every span recorded from now on to ``exporter`` as well."""
        self.events.subscribe(exporter.export)

    def spans(self, trace_id: str | None = None) -> list[Span]:
        """The kept spans (only those of ``trace_id`` when given), oldest first."""
        if trace_id is None:
            return list(self._spans)
        return [span for span in self._spans if span.trace_id == trace_id]

    def clear(self) -> None:
        """Forget every kept span."""
        self._spans.clear()

    def __len__(self) -> int:
        return len(self._spans)
