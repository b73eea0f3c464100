"""Errors the gateway raises while loading its configuration or starting up."""

from __future__ import annotations

from shipyard.core.errors import ConfigError, ShipyardError


class GatewayError(ShipyardError):
    """Root of the gateway's own errors."""


class GatewayConfigError(ConfigError):
    """The gateway configuration file is invalid.

    The message names the file, the line and the dotted key, and says what is allowed, so
    the fix is obvious without reading the gateway's source.
    """

    def __init__(
        self, source: str, line: int | None, key: str, value: object, allowed: str
    ) -> None:
        super().__init__(key, value, allowed)
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        self.args = (f"{where}: invalid {key}={value!r}: {allowed}",)

    def __str__(self) -> str:
        return str(self.args[0])


class UpstreamError(GatewayError, ConnectionError):
    """The upstream could not be reached or broke the connection (the client sees 502)."""


class UpstreamTimeoutError(GatewayError, TimeoutError):
    """The upstream did not answer within the route's timeout (the client sees 504)."""


class StaleConnectionError(UpstreamError):
    """A pooled connection was closed by the upstream before it answered anything.

    The request never reached the upstream, so the gateway resends it once on a fresh
    connection; seen by users only if that fails too."""
