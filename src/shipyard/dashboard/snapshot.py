"""What the dashboard shows, as plain data: one :class:`Snapshot` of the whole system.

Everything here is JSON-ready (``msgspec.json.encode(snapshot)``); the page renders it
as it is, so a field added here is a field the page can show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.dashboard.control import ManagedProcess


@dataclass(frozen=True, slots=True)
class CheckView:
    """One health check of an instance, as the registry reports it."""

    name: str
    status: str
    output: str = ""


@dataclass(frozen=True, slots=True)
class BreakerView:
    """One circuit breaker of an instance.

    ``failure_rate`` is failures / calls over the collector's ``rate_window`` (``None``
    while no call went through in that window); the counts are totals since the instance
    started. ``source`` says where it was read: ``service`` (a breaker the service
    watches) or ``gateway`` (the gateway's breaker towards an upstream service).
    """

    name: str
    state: str
    failure_rate: float | None
    successes: int
    failures: int
    rejected: int
    source: str = "service"


@dataclass(frozen=True, slots=True)
class LimiterView:
    """One rate limiter's decisions since the instance started."""

    name: str
    allowed: int | None
    rejected: int


@dataclass(frozen=True, slots=True)
class DatabasePoolView:
    """One database pool (a bulkhead) of an instance: its size, transactions running,
    callers waiting now, and callers turned away since the instance started."""

    database: str
    pool: str
    size: int
    in_use: int
    waiting: int
    rejected: int


@dataclass(frozen=True, slots=True)
class RequestsView:
    """HTTP requests an instance answered: totals, and rates over ``rate_window``."""

    total: int
    errors: int
    per_second: float | None
    error_rate: float | None


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance of a service: its health, and what its ``/metrics`` said.

    ``metrics_error`` is set when the scrape failed (a dead instance, a missing
    endpoint); ``faults`` are its injected faults (``None`` when unknown: no chaos token,
    or the instance has no chaos endpoint).
    """

    id: str
    service: str
    address: str
    port: int
    status: str
    checks: list[CheckView] = field(default_factory=list)
    requests: RequestsView | None = None
    breakers: list[BreakerView] = field(default_factory=list)
    limiters: list[LimiterView] = field(default_factory=list)
    pools: list[DatabasePoolView] = field(default_factory=list)
    upstream: dict[str, dict[str, int]] = field(default_factory=dict)
    """Gateways only: responses relayed from each upstream service, by status class."""
    faults: list[dict[str, Any]] | None = None
    metrics_error: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service and its instances; ``status`` is the best instance's (any passing →
    passing), so one dead copy does not paint a redundant service red."""

    name: str
    status: str
    instances: list[InstanceView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SagaView:
    """One saga as the saga query API shows it, with its timeline (oldest first)."""

    saga_id: str
    name: str
    state: str
    failed_step: str | None
    error: str | None
    created_at: float
    updated_at: float
    timeline: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SagasView:
    """Sagas by state (each count is at most ``count_limit``: more shows as the limit)
    and the most recent ones with their timelines. ``error`` is set when the saga query
    API could not be read."""

    counts: dict[str, int] = field(default_factory=dict)
    count_limit: int = 0
    recent: list[SagaView] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FlowView:
    """Traffic from ``source`` to ``target``, counted by ``kind``.

    Two real sources feed it: the recent sagas' timelines (``saga:order`` →
    ``charge_payment``: completed / failed / compensated steps) and the gateway's
    ``shipyard_gateway_upstream_requests`` (``gateway`` → ``payments``: 2xx / 5xx ...).
    """

    source: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole picture at ``taken_at`` (wall time); ``version`` grows by one each time
    the picture changes."""

    version: int
    taken_at: float
    registry_error: str | None
    services: list[ServiceView]
    sagas: SagasView | None
    flows: list[FlowView]
    processes: list[ManagedProcess] | None
    control: bool = False
    """True when the dashboard can change things (a chaos token is configured)."""
