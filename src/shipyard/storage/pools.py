"""Bulkheaded connection pools: named pools with their own size and max wait, so a slow
report (``analytics``) cannot take the connections user-facing queries (``api``) need.

``open_database(url, pools={"api": {}, "analytics": {"size": 3}})`` configures them;
``db.transaction(pool="analytics")`` or ``db.pool("analytics").transaction()`` uses one.
The waiting and rejecting is a :class:`~shipyard.resilience.Bulkhead` per pool; what sits
behind a slot is the adapter's business (separate connections per name on PostgreSQL,
separate reader connections per name on SQLite).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from shipyard.core import ConfigError, validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.resilience import Bulkhead, BulkheadFullError
from shipyard.storage.database import Dialect, Transaction, redacted_url
from shipyard.storage.errors import PoolExhaustedError, UnknownPoolError

# Waiters in a pool without a queue limit: bounded by memory and max_wait, not by count.
UNBOUNDED_QUEUE = sys.maxsize


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """One pool: at most ``size`` transactions at once; up to ``max_queue`` more wait up to
    ``max_wait`` seconds (``None``: as long as it takes) before ``PoolExhaustedError``."""

    size: int
    max_wait: float | None = 5.0
    max_queue: int = UNBOUNDED_QUEUE

    def __post_init__(self) -> None:
        validation.at_least("size", self.size, 1)
        validation.optional_positive("max_wait", self.max_wait)
        validation.at_least("max_queue", self.max_queue, 1)


DEFAULT_POOLS: Mapping[str, PoolSettings] = {
    # User-facing requests wait briefly, then fail fast so the client can retry elsewhere.
    "api": PoolSettings(size=20, max_wait=5.0),
    # Heavy reports: few at once, and they may queue for a while.
    "analytics": PoolSettings(size=5, max_wait=30.0),
    # Jobs tolerate waiting.
    "background": PoolSettings(size=10, max_wait=60.0),
}
"""The split the patterns literature uses: ``api`` 20 / 5 s, ``analytics`` 5 / 30 s,
``background`` 10 / 60 s. A pool configured under one of these names starts from it."""

_KEYS = ("size", "max_wait", "max_queue")

PoolConfig = Mapping[str, PoolSettings | Mapping[str, Any]]
"""``{name: PoolSettings(...)}`` or ``{name: {"size": 5, "max_wait": 30, "max_queue": 50}}``;
keys left out come from :data:`DEFAULT_POOLS` for its names (``size`` is required for
others, ``max_wait`` defaults to 5 s, the queue to unbounded)."""


def pool_settings(config: PoolConfig) -> dict[str, PoolSettings]:
    """Validate ``config``; a bad name, key or value raises ``ConfigError`` naming it."""
    if not isinstance(config, Mapping) or not config:
        raise ConfigError("pools", config, "must be a non-empty mapping of pool name to settings")
    settings: dict[str, PoolSettings] = {}
    for name, entry in config.items():
        if not isinstance(name, str) or not name:
            raise ConfigError("pools", name, "pool names must be non-empty strings")
        if isinstance(entry, PoolSettings):
            settings[name] = entry
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"pools.{name}", entry, "must be PoolSettings or a mapping")
        for key in entry:
            if key not in _KEYS:
                raise ConfigError(f"pools.{name}.{key}", entry[key], f"unknown; allowed: {_KEYS}")
        base = DEFAULT_POOLS.get(name)
        if base is None and "size" not in entry:
            raise ConfigError(f"pools.{name}.size", None, "is required for a custom pool")
        values: dict[str, Any] = {}
        if base is not None:
            values = {"size": base.size, "max_wait": base.max_wait, "max_queue": base.max_queue}
        values.update(entry)
        try:
            settings[name] = PoolSettings(**values)
        except ConfigError as error:
            raise ConfigError(f"pools.{name}.{error.field}", error.value, error.allowed) from None
    return settings


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """A snapshot of one pool: its size, transactions running, callers waiting, and how
    many were turned away (queue full or ``max_wait`` ran out) since it opened."""

    name: str
    size: int
    in_use: int
    waiting: int
    rejected: int
    max_wait: float | None


class Pools:
    """The bulkheads in front of an adapter's connections, one per pool name."""

    __slots__ = ("_bulkheads", "_url", "default", "settings")

    def __init__(self, url: str, settings: Mapping[str, PoolSettings], clock: Clock) -> None:
        self._url = redacted_url(url)  # it goes into error messages
        self.settings = dict(settings)
        # The first pool configured serves transactions that name none.
        self.default = next(iter(self.settings))
        self._bulkheads = {
            name: Bulkhead(name, s.size, max_queue=s.max_queue, max_wait=s.max_wait, clock=clock)
            for name, s in self.settings.items()
        }

    @classmethod
    def build(
        cls,
        url: str,
        pools: PoolConfig | None,
        *,
        default_size: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Pools:
        """From ``pools`` config, or (``None``) one ``default`` pool of ``default_size``
        that waits as long as it takes — the behaviour of a database without pools."""
        if pools is None:
            settings = {"default": PoolSettings(default_size, max_wait=None)}
        else:
            settings = pool_settings(pools)
        return cls(url, settings, clock)

    def name(self, pool: str | None) -> str:
        """``pool``, or the default pool's name; ``UnknownPoolError`` for an unknown one."""
        if pool is None:
            return self.default
        if pool not in self._bulkheads:
            raise UnknownPoolError(pool, tuple(self._bulkheads))
        return pool

    @asynccontextmanager
    async def slot(self, pool: str) -> AsyncIterator[None]:
        """Hold one of ``pool``'s slots for the block (``pool`` as returned by ``name``)."""
        bulkhead = self._bulkheads[pool]
        try:
            await bulkhead.acquire()
        except BulkheadFullError as full:
            raise PoolExhaustedError(
                self._url, pool, bulkhead.max_concurrent, full.waited, bulkhead.metrics.queued
            ) from None
        try:
            yield
        finally:
            bulkhead.release()

    def try_take(self, pool: str) -> bool:
        """Take one of ``pool``'s slots only if one is free now (no wait, no rejection
        counted); give a ``True`` back with :meth:`give_back`."""
        return self._bulkheads[pool].try_acquire()

    def give_back(self, pool: str) -> None:
        """Return a slot :meth:`try_take` took."""
        self._bulkheads[pool].release()

    def metrics(self) -> dict[str, PoolMetrics]:
        """A snapshot of every pool, by name."""
        out = {}
        for name, bulkhead in self._bulkheads.items():
            m = bulkhead.metrics
            out[name] = PoolMetrics(
                name, m.max_concurrent, m.active, m.queued, m.rejected, bulkhead.max_wait
            )
        return out


class _PooledTransactions(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def dialect(self) -> Dialect: ...

    def transaction(
        self, *, pool: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Transaction]: ...


class PoolView:
    """One named pool of a database, itself usable as a ``Database``: hand
    ``db.pool("background")`` to an outbox relay and its transactions stay in that pool.

    ``close()`` does nothing: the pool belongs to its database, which closes it.
    """

    __slots__ = ("_db", "name")

    def __init__(self, db: _PooledTransactions, name: str) -> None:
        self._db = db
        self.name = name

    @property
    def url(self) -> str:
        """The database's URL."""
        return self._db.url

    @property
    def dialect(self) -> Dialect:
        """The database's dialect."""
        return self._db.dialect

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """A transaction in this pool (see the database's ``transaction``)."""
        return self._db.transaction(pool=self.name, readonly=readonly)

    async def close(self) -> None:
        """Nothing to do: closing the database closes its pools."""
