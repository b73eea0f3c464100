"""Errors of the health package; each also subclasses the closest builtin."""

from __future__ import annotations

from shipyard.core.errors import ShipyardError


class HealthError(ShipyardError):
    """Root of the errors the health package raises on its own behalf."""


class CheckFailedError(HealthError, RuntimeError):
    """A ready-made check found its dependency unhealthy; the message says what to look at.

    Messages never contain connection strings, passwords or hosts: they end up in probe
    responses, which load balancers and dashboards show to people who should not see them.
    """
