"""A tiny synchronous publisher that metrics exporters, loggers and dashboards subscribe to.

Every stateful component (breaker, bulkhead, limiter, registry, saga) owns one
``EventPublisher``. Emitting with no listeners costs one truth test, so it stays on the
hot path; a listener that raises is logged and never breaks the call that emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

E = TypeVar("E")
Listener = Callable[[E], None]

_log = structlog.get_logger("shipyard.events")


class EventPublisher(Generic[E]):
    """Fan-out of events of type ``E`` to subscribed listeners."""

    __slots__ = ("_listeners", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._listeners: tuple[Listener[E], ...] = ()

    def subscribe(self, listener: Listener[E]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    @property
    def has_listeners(self) -> bool:
        """True when at least one listener is subscribed (skip building events otherwise)."""
        return bool(self._listeners)

    def emit(self, event: E) -> None:
        """Deliver ``event`` to every listener, isolating listener failures."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener failed", source=self.source, payload=repr(event))
