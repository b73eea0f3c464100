"""Errors raised by the storage adapters."""

from __future__ import annotations

from shipyard.core import ShipyardError
from shipyard.resilience.errors import BulkheadFullError


class StorageError(ShipyardError, RuntimeError):
    """A database operation failed; the message names the database and the cause."""


class DatabaseClosedError(StorageError):
    """The database was used after ``close()``; open a new one with ``open_database``."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"database {url} is closed; open it again with open_database()")


class PoolExhaustedError(StorageError, BulkheadFullError, TimeoutError):
    """Every connection of the named pool stayed busy: the queue was full, or the caller
    waited ``max_wait`` seconds without getting one. Also a ``BulkheadFullError``, so
    load-shedding code that handles bulkheads handles this too."""

    def __init__(
        self, database: str, pool: str, size: int, waited: float | None, waiting: int
    ) -> None:
        # Set BulkheadFullError's attributes by hand: its __init__ builds its own message.
        self.database = database
        self.pool = pool
        self.bulkhead = pool
        self.max_concurrent = size
        self.waited = waited
        why = (
            f"no connection freed up within max_wait={waited:g}s"
            if waited
            else f"its wait queue is full ({waiting} callers already waiting)"
        )
        Exception.__init__(
            self,
            f"database pool {pool!r} of {database} is exhausted (all {size} connections "
            f"busy): {why}; shed load, or raise the pool's size / max_wait / max_queue",
        )


class UnknownPoolError(StorageError, KeyError):
    """A transaction asked for a pool that was not configured."""

    def __init__(self, pool: str, known: tuple[str, ...]) -> None:
        self.pool = pool
        self.known = known
        super().__init__(
            f"no database pool named {pool!r}; configured pools: {', '.join(known)} "
            "(add it to open_database(..., pools={...}))"
        )

    def __str__(self) -> str:
        # KeyError would show the repr of the message; show the message itself.
        return str(self.args[0])


class DatabaseUnavailableError(StorageError, ConnectionError):
    """No connection to the database could be had: connecting failed, or the database
    breaker is open after repeated failures and rejected the request without trying.

    ``retry_after`` is how many seconds until the breaker lets a probe through (``None``
    when the connection attempt itself failed). The URL in the message has no password.
    """

    def __init__(self, database: str, reason: str, retry_after: float | None = None) -> None:
        self.database = database
        self.retry_after = retry_after
        when = f"; retry in {retry_after:.3f}s" if retry_after is not None else ""
        # BaseException.__init__, not OSError's: a second argument would become errno.
        Exception.__init__(
            self,
            f"database {database} is unavailable: {reason}{when}; "
            "check that it is running and reachable",
        )


class MigrationError(StorageError):
    """A schema migration could not be applied (or the migration folder is malformed);
    the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"migration {path}: {problem}")


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited afterwards; add a new migration instead."""

    def __init__(self, path: str, recorded: str, actual: str) -> None:
        self.recorded = recorded
        self.actual = actual
        super().__init__(
            path,
            f"was changed after it was applied (checksum {actual[:12]}..., recorded "
            f"{recorded[:12]}...); restore the applied version and put the change in a new "
            "migration file",
        )
