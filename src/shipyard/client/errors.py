"""Errors a ``ServiceClient`` raises on its own behalf; each also subclasses a builtin.

Timeouts are ``shipyard.resilience.CallTimeoutError``; an open breaker is
``CircuitOpenError``; discovery failures are ``ServiceNotFound`` / ``NoHealthyInstance``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core.errors import ShipyardError
from shipyard.resilience.errors import CallTimeoutError

if TYPE_CHECKING:
    from shipyard.client.response import Response


class ClientError(ShipyardError):
    """Root of the errors a service call raises about the upstream's answer or connection."""


class HTTPStatusError(ClientError, RuntimeError):
    """The upstream answered with a 4xx or 5xx status.

    ``status`` is what ``shipyard.resilience.is_client_error`` reads (so a ``Retry`` never
    repeats a 4xx); ``retry_after`` is the seconds a 429/503 asked the caller to wait
    (``None`` otherwise), which a ``Retry`` uses as its backoff hint. ``response`` holds the
    whole answer, body included.
    """

    def __init__(self, response: Response, retry_after: float | None = None) -> None:
        self.response = response
        self.status = response.status
        self.retry_after = retry_after
        self.method = response.method
        self.url = response.url
        hint = f"; it asked to retry after {retry_after:g}s" if retry_after is not None else ""
        super().__init__(
            f"{response.method} {response.url} answered {response.status} {response.reason}"
            f"{hint}; {self._advice()}"
        )

    def _advice(self) -> str:
        return "see .response for the body"


class HTTPClientStatusError(HTTPStatusError):
    """A 4xx: the request itself is wrong (or not allowed); repeating it will not help."""

    def _advice(self) -> str:
        if self.status == 429:
            return "slow down (the upstream is rate limiting this caller)"
        return "fix the request; see .response for the upstream's explanation"


class HTTPServerStatusError(HTTPStatusError):
    """A 5xx: the upstream failed; 502/503/504 are retried on another instance."""

    def _advice(self) -> str:
        return "the upstream failed; retry later or check its logs"


class UpstreamConnectionError(ClientError, ConnectionError):
    """No HTTP answer: the connection was refused, reset or broke mid-response.

    ``refused`` is True when nothing listened on the instance's port (the outlier detector
    ejects such an instance at once).
    """

    def __init__(self, method: str, url: str, detail: str, *, refused: bool = False) -> None:
        self.method = method
        self.url = url
        self.refused = refused
        super().__init__(
            f"{method} {url} failed without an answer: {detail}; "
            "is the instance running and reachable?"
        )


class ClientClosedError(ClientError, RuntimeError):
    """A call was made on a ``ServiceClient`` after ``aclose()``."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(
            f"ServiceClient({service!r}) is closed; create a new client (or call before "
            "leaving its async with block)"
        )


class ConnectTimeoutError(CallTimeoutError):
    """Opening the TCP connection took longer than ``connect_timeout``."""

    def __init__(self, seconds: float, url: str) -> None:
        self.url = url
        super().__init__(seconds, f"connecting to {url}")
