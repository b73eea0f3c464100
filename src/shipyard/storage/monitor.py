"""The database breaker and pool health monitor.

Acquiring a connection goes through a :class:`~shipyard.resilience.CircuitBreaker` that
counts only connection failures (a bad query says nothing about the database's health).
After repeated failures it opens and requests fail at once with
``DatabaseUnavailableError`` instead of each waiting for a connect timeout; after
``reset_timeout`` one probe is let through, and when it connects traffic flows again.
``db.health()`` gives a :class:`DatabaseHealth` snapshot for health checks and dashboards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.resilience import BreakerState, CircuitBreaker, CircuitOpenError
from shipyard.storage.database import Dialect, redacted_url
from shipyard.storage.errors import DatabaseUnavailableError
from shipyard.storage.pools import PoolMetrics

T = TypeVar("T")

_OPEN_STATES = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


def is_connection_failure(error: BaseException) -> bool:
    """True for errors that mean "could not reach the database" (refused, reset, timed
    out, DNS): the ones the database breaker counts."""
    return isinstance(error, OSError)


def database_breaker(
    url: str,
    *,
    record: Callable[[BaseException], bool] = is_connection_failure,
    clock: Clock = SYSTEM_CLOCK,
) -> CircuitBreaker:
    """The default breaker for ``url``: opens when at least 5 connection attempts in the
    last 10 s failed half the time or more, probes again after 5 s."""
    return CircuitBreaker(
        f"database {redacted_url(url)}",
        failure_rate_threshold=0.5,
        minimum_calls=5,
        window=10.0,
        reset_timeout=5.0,
        record=record,
        clock=clock,
    )


class ConnectionGuard:
    """Runs connection attempts through the breaker and turns their failures into
    ``DatabaseUnavailableError`` naming the database (without its password)."""

    __slots__ = ("_failure", "breaker", "database")

    def __init__(
        self,
        url: str,
        breaker: CircuitBreaker,
        failure: Callable[[BaseException], bool] = is_connection_failure,
    ) -> None:
        self.database = redacted_url(url)
        self._failure = failure
        self.breaker = breaker

    async def connect(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``await attempt()`` unless the breaker is open; connection failures are counted
        and re-raised as ``DatabaseUnavailableError``, other errors pass through."""
        try:
            return await self.breaker.call(attempt)
        except CircuitOpenError as rejected:
            raise DatabaseUnavailableError(
                self.database,
                f"the database breaker is {rejected.state} after repeated connection failures",
                rejected.remaining,
            ) from None
        except Exception as error:
            if self._failure(error):
                raise self.unavailable(error) from error
            raise

    def unavailable(self, error: BaseException) -> DatabaseUnavailableError:
        """The error for a failed connection attempt."""
        return DatabaseUnavailableError(self.database, f"cannot connect ({describe(error)})")


def describe(error: BaseException) -> str:
    """``TypeName: message``, or just the type name when the message is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """A snapshot for health checks and dashboards. ``database`` is the URL without its
    password; ``breaker`` is ``None`` where there is none (SQLite opens a local file)."""

    database: str
    dialect: Dialect
    breaker: BreakerState | None
    pools: Mapping[str, PoolMetrics]

    @property
    def available(self) -> bool:
        """False while the breaker is open: requests are being failed fast."""
        return self.breaker not in _OPEN_STATES
