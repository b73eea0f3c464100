"""Errors raised by the storage adapters."""

from __future__ import annotations

from shipyard.core import ShipyardError


class StorageError(ShipyardError, RuntimeError):
    """A database operation failed; the message names the database and the cause."""


class DatabaseClosedError(StorageError):
    """The database was used after ``close()``; open a new one with ``open_database``."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"database {url} is closed; open it again with open_database()")
