"""The root of every error Shipyard raises, and the error for invalid configuration."""

from __future__ import annotations


class ShipyardError(Exception):
    """Root of all Shipyard errors; catch this to handle any of them.

    Each concrete error also subclasses the closest builtin (``TimeoutError``,
    ``ValueError``, ...), so code that does not know Shipyard still handles it sensibly.
    """


class ConfigError(ShipyardError, ValueError):
    """A configuration value is invalid.

    ``field`` names the offending parameter (a dotted path for nested config) and
    ``allowed`` says what would be accepted, so the message tells the user the fix.
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}={value!r}: {allowed}")
