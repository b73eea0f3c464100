"""``Response``: what a service call returns — status, headers and the whole body."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import msgspec

from shipyard.client.errors import (
    HTTPClientStatusError,
    HTTPServerStatusError,
    HTTPStatusError,
)
from shipyard.discovery.model import Instance

# Only these statuses carry a Retry-After worth honouring as a backoff hint (RFC 9110 §10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date
    (relative to ``now``, Unix seconds). ``None`` when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


class Response:
    """An upstream's answer, read in full: ``status``, ``headers`` (case-insensitive),
    ``body`` bytes, and which ``instance`` answered."""

    __slots__ = ("body", "headers", "instance", "method", "status", "url")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        method: str = "GET",
        url: str = "",
        instance: Instance | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.method = method
        self.url = url
        self.instance = instance

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.method} {self.url} ({len(self.body)} bytes)>"

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status < 400

    @property
    def reason(self) -> str:
        """The standard reason phrase of ``status`` ('' for unknown codes)."""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def json(self) -> Any:
        """The body decoded as JSON (``msgspec.DecodeError``, a ``ValueError``, if it is not)."""
        return msgspec.json.decode(self.body)

    def text(self) -> str:
        """The body decoded with the charset of its Content-Type (UTF-8 by default)."""
        content_type = self.headers.get("Content-Type", "")
        charset = "utf-8"
        for part in content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        return self.body.decode(charset, errors="replace")

    def error(self, now: float) -> HTTPStatusError:
        """The typed error for this 4xx/5xx answer (``now``: Unix seconds, for Retry-After)."""
        retry_after = None
        if self.status in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(self.headers.get("Retry-After"), now)
        if self.status >= 500:
            return HTTPServerStatusError(self, retry_after)
        return HTTPClientStatusError(self, retry_after)

    def raise_for_status(self) -> Response:
        """Raise the typed ``HTTPStatusError`` for a 4xx/5xx; return ``self`` otherwise."""
        if self.status >= 400:
            raise self.error(time.time())
        return self
