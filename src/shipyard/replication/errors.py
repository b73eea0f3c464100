"""Errors raised while replicating another service's data."""

from __future__ import annotations

from shipyard.core import ShipyardError


class ReplicationError(ShipyardError):
    """Root of the errors the replication package raises."""


class BackfillError(ReplicationError, ConnectionError):
    """The owner's API did not answer a backfill page usably; the cache keeps what it had."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(
            f"backfill from {url} failed: {problem}; check the owner service and run it again "
            "(rows already copied stay, newer versions are never overwritten)"
        )
