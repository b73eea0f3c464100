"""Errors of the service runtime."""

from __future__ import annotations

from shipyard.core import ShipyardError


class ServiceError(ShipyardError):
    """Root of the service runtime's errors."""


class ServiceStartupError(ServiceError, RuntimeError):
    """The wrapped app's start-up (its lifespan) failed; the service does not start.

    The message carries the app's own reason: fix that and start again.
    """

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"service {service!r} failed to start: {reason or 'no reason given'}")
