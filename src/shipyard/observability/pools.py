"""Prometheus export of database pools (the storage bulkheads), read at scrape time.

Metric families (labelled ``database`` — the name the service gave it — and ``pool``):

* ``shipyard_db_pool_size`` — transactions the pool runs at once;
* ``shipyard_db_pool_in_use`` — transactions running now;
* ``shipyard_db_pool_waiting`` — callers waiting for a slot;
* ``shipyard_db_pool_rejected_total`` — callers turned away (queue full or ``max_wait``
  ran out) since the database opened.

Nothing is counted per transaction: the collector asks each database for its
``pool_metrics()`` when ``/metrics`` is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shipyard.core import ConfigError

_LABELS = ("database", "pool")


class PoolStats(Protocol):
    """One pool's numbers (``shipyard.storage.PoolMetrics`` has them)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def rejected(self) -> int: ...


class HasPools(Protocol):
    """What the collector reads: any ``shipyard.storage`` database (structurally, so
    observability does not depend on storage)."""

    def pool_metrics(self) -> Mapping[str, PoolStats]: ...


class DatabasePoolMetrics(Collector):
    """Exports the pools of the databases given to :meth:`watch`, by name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._databases: dict[str, HasPools] = {}
        registry.register(self)

    def watch(self, name: str, database: HasPools) -> None:
        """Export ``database``'s pools labelled ``database=name`` (replacing any database
        watched under that name)."""
        if not name:
            raise ConfigError("name", name, "must name the database, e.g. 'orders'")
        if not callable(getattr(database, "pool_metrics", None)):
            raise ConfigError("database", database, "must be a shipyard.storage database")
        self._databases[name] = database

    def unwatch(self, name: str) -> None:
        """Stop exporting the database watched as ``name`` (no-op when unknown)."""
        self._databases.pop(name, None)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """No fixed description: the series depend on the databases watched."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The current pool metrics of every watched database."""
        size = GaugeMetricFamily(
            "shipyard_db_pool_size", "Transactions a database pool runs at once", labels=_LABELS
        )
        in_use = GaugeMetricFamily(
            "shipyard_db_pool_in_use", "Transactions running in a database pool", labels=_LABELS
        )
        waiting = GaugeMetricFamily(
            "shipyard_db_pool_waiting", "Callers waiting for a database pool slot", labels=_LABELS
        )
        rejected = CounterMetricFamily(
            "shipyard_db_pool_rejected",
            "Callers a database pool turned away (queue full or max_wait ran out)",
            labels=_LABELS,
        )
        for name, database in list(self._databases.items()):
            for pool in database.pool_metrics().values():
                labels = [name, pool.name]
                size.add_metric(labels, pool.size)
                in_use.add_metric(labels, pool.in_use)
                waiting.add_metric(labels, pool.waiting)
                rejected.add_metric(labels, pool.rejected)
        yield from (size, in_use, waiting, rejected)
