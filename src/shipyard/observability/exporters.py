"""Prometheus exporters for the resilience policies: they subscribe to each policy's
``EventPublisher``, so a policy nobody watches pays nothing.

Metric families (all labelled by the policy's name):

* ``shipyard_breaker_state{breaker,state}`` — 1 for the current state, 0 for the others;
* ``shipyard_breaker_calls_total{breaker,outcome}`` — ``success`` / ``failure``;
* ``shipyard_breaker_rejected_total``, ``_slow_calls_total``, ``_timeouts_total``;
* ``shipyard_bulkhead_active``, ``shipyard_bulkhead_queued`` (gauges),
  ``shipyard_bulkhead_rejected_total``;
* ``shipyard_retry_events_total{retry,kind}`` — ``retry``, ``success_after_retry``,
  ``give_up``, ``budget_exhausted``;
* ``shipyard_rate_limiter_decisions_total{limiter,decision}`` — ``allowed`` / ``rejected``
  (limiters publish no events: wrap one with :meth:`ResilienceMetrics.limiter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from shipyard.core import ConfigError
from shipyard.resilience import (
    BreakerEvent,
    BreakerRegistry,
    BreakerState,
    Bulkhead,
    BulkheadEvent,
    Bulkheads,
    CircuitBreaker,
    Pipeline,
    RateLimitDecision,
    RateLimiter,
    Retry,
    RetryEvent,
)

_STATES = tuple(state.value for state in BreakerState)

Unsubscribe = Callable[[], None]


class MeteredLimiter:
    """A ``RateLimiter`` that counts its decisions, then answers like the one it wraps."""

    __slots__ = ("_acquire", "_allowed", "_rejected", "limiter", "name")

    def __init__(self, limiter: RateLimiter, name: str, decisions: Counter) -> None:
        self.limiter = limiter
        self.name = name
        self._acquire = limiter.acquire
        # Children resolved once: ``labels()`` takes a lock and a dict lookup per call.
        self._allowed = decisions.labels(name, "allowed")
        self._rejected = decisions.labels(name, "rejected")

    async def acquire(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Ask the wrapped limiter, and count the answer."""
        decision = await self._acquire(key, cost)
        (self._allowed if decision.allowed else self._rejected).inc()
        return decision


class ResilienceMetrics:
    """Breaker, bulkhead, retry and rate-limiter metrics in ``registry``.

    ``watch(policy, ...)`` accepts breakers, bulkheads, retries, a ``Pipeline`` (its
    stages), a ``BreakerRegistry`` or ``Bulkheads`` (their current members) and returns a
    function that stops watching them all.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.breaker_state = Gauge(
            "shipyard_breaker_state",
            "Circuit breaker state: 1 for the current state, 0 for the others",
            ("breaker", "state"),
            registry=registry,
        )
        self.breaker_calls = Counter(
            "shipyard_breaker_calls",
            "Calls a breaker let through, by outcome",
            ("breaker", "outcome"),
            registry=registry,
        )
        self.breaker_rejected = Counter(
            "shipyard_breaker_rejected",
            "Calls a breaker refused without calling (open or half-open and full)",
            ("breaker",),
            registry=registry,
        )
        self.breaker_slow = Counter(
            "shipyard_breaker_slow_calls",
            "Calls slower than the breaker's slow_call_duration",
            ("breaker",),
            registry=registry,
        )
        self.breaker_timeouts = Counter(
            "shipyard_breaker_timeouts",
            "Calls the breaker's own timeout cancelled",
            ("breaker",),
            registry=registry,
        )
        self.bulkhead_active = Gauge(
            "shipyard_bulkhead_active",
            "Calls running in a bulkhead",
            ("bulkhead",),
            registry=registry,
        )
        self.bulkhead_queued = Gauge(
            "shipyard_bulkhead_queued",
            "Callers waiting for a bulkhead slot",
            ("bulkhead",),
            registry=registry,
        )
        self.bulkhead_rejected = Counter(
            "shipyard_bulkhead_rejected",
            "Calls a full bulkhead refused",
            ("bulkhead",),
            registry=registry,
        )
        self.retry_events = Counter(
            "shipyard_retry_events",
            "What retries did: retry, success_after_retry, give_up, budget_exhausted",
            ("retry", "kind"),
            registry=registry,
        )
        self.limiter_decisions = Counter(
            "shipyard_rate_limiter_decisions",
            "Rate limiter decisions: allowed or rejected",
            ("limiter", "decision"),
            registry=registry,
        )
        self._breakers: dict[str, CircuitBreaker] = {}

    # -- watching ---------------------------------------------------------------------

    def watch(self, *sources: Any) -> Unsubscribe:
        """Export the metrics of every policy in ``sources``; returns the way to stop."""
        unsubscribes: list[Unsubscribe] = []
        for policy in _flatten(sources, top_level=True):
            if isinstance(policy, CircuitBreaker):
                unsubscribes.append(self._watch_breaker(policy))
            elif isinstance(policy, Bulkhead):
                unsubscribes.append(self._watch_bulkhead(policy))
            elif isinstance(policy, Retry):
                unsubscribes.append(policy.events.subscribe(self._on_retry))

        def unsubscribe_all() -> None:
            for unsubscribe in unsubscribes:
                unsubscribe()

        return unsubscribe_all

    def limiter(self, limiter: RateLimiter, name: str | None = None) -> MeteredLimiter:
        """``limiter`` wrapped so its decisions are counted (use the wrapper in its place)."""
        label = name if name is not None else getattr(limiter, "name", None)
        if not isinstance(label, str) or not label:
            raise ConfigError("name", name, "must name the limiter (it has no .name of its own)")
        return MeteredLimiter(limiter, label, self.limiter_decisions)

    def refresh(self) -> None:
        """Read each watched breaker's state (before a scrape): an open breaker becomes
        half-open only when asked, and the scrape should see that."""
        for breaker in tuple(self._breakers.values()):
            self._set_state(breaker.name, breaker.state)

    # -- listeners --------------------------------------------------------------------

    def _watch_breaker(self, breaker: CircuitBreaker) -> Unsubscribe:
        name = breaker.name
        self._breakers[name] = breaker
        self._set_state(name, breaker.state)
        success = self.breaker_calls.labels(name, "success")
        failure = self.breaker_calls.labels(name, "failure")
        rejected = self.breaker_rejected.labels(name)
        slow = self.breaker_slow.labels(name)
        timeouts = self.breaker_timeouts.labels(name)

        def on_event(event: BreakerEvent) -> None:
            kind = event.kind
            if kind == "success":
                success.inc()
            elif kind == "failure":
                failure.inc()
            elif kind == "rejected":
                rejected.inc()
            elif kind == "state_change" and event.to_state is not None:
                self._set_state(name, event.to_state)
            elif kind == "slow":
                slow.inc()
            elif kind == "timeout":
                timeouts.inc()

        unsubscribe = breaker.events.subscribe(on_event)

        def stop() -> None:
            unsubscribe()
            self._breakers.pop(name, None)

        return stop

    def _set_state(self, name: str, current: BreakerState) -> None:
        for state in _STATES:
            self.breaker_state.labels(name, state).set(1 if state == current else 0)

    def _watch_bulkhead(self, bulkhead: Bulkhead) -> Unsubscribe:
        name = bulkhead.name
        active = self.bulkhead_active.labels(name)
        queued = self.bulkhead_queued.labels(name)
        rejected = self.bulkhead_rejected.labels(name)
        snapshot = bulkhead.metrics
        active.set(snapshot.active)
        queued.set(snapshot.queued)

        def on_event(event: BulkheadEvent) -> None:
            active.set(event.active)
            queued.set(event.queued)
            if event.kind == "rejected":
                rejected.inc()

        return bulkhead.events.subscribe(on_event)

    def _on_retry(self, event: RetryEvent) -> None:
        self.retry_events.labels(event.retry, event.kind).inc()


_WATCHABLE = (CircuitBreaker, Bulkhead, Retry)


def _flatten(sources: Iterable[Any], *, top_level: bool = False) -> Iterable[Any]:
    for source in sources:
        if isinstance(source, Pipeline):
            # A pipeline's timeouts and fallbacks have no metrics of their own: skip them.
            yield from _flatten(source.policies)
        elif isinstance(source, BreakerRegistry):
            yield from source.all()
        elif isinstance(source, Bulkheads):
            yield from source.values()
        elif isinstance(source, _WATCHABLE):
            yield source
        elif top_level:
            raise ConfigError(
                "sources",
                source,
                "must be CircuitBreaker, Bulkhead, Retry, Pipeline, BreakerRegistry or "
                "Bulkheads (wrap a rate limiter with .limiter() instead)",
            )
