"""Errors raised by the idempotency package."""

from __future__ import annotations

from shipyard.core import ShipyardError


class IdempotencyError(ShipyardError):
    """Root of the idempotency package's errors."""


class InvalidIdempotencyKeyError(IdempotencyError, ValueError):
    """An ``Idempotency-Key`` header value is empty, too long or not printable ASCII.

    The middleware answers 400 with this message; the client should send 1-255 printable
    ASCII characters, typically a UUID.
    """
