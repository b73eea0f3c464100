"""Responses, their typed errors, and Retry-After parsing."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from shipyard.client import (
    HTTPClientStatusError,
    HTTPServerStatusError,
    Response,
    parse_retry_after,
)
from shipyard.core import ShipyardError
from shipyard.resilience import is_client_error

NOW = 1_700_000_000.0


def test_retry_after_reads_delta_seconds() -> None:
    assert parse_retry_after("120", NOW) == 120.0


def test_retry_after_reads_an_http_date_relative_to_now() -> None:
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == 30.0


def test_retry_after_in_the_past_means_no_wait() -> None:
    assert parse_retry_after(formatdate(NOW - 30, usegmt=True), NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5"])
def test_unreadable_retry_after_is_no_hint(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_json_and_text_decode_the_body() -> None:
    response = Response(
        200, {"Content-Type": "text/plain; charset=latin-1"}, "café".encode("latin-1")
    )
    assert response.text() == "café"
    assert Response(200, {}, b'{"a": 1}').json() == {"a": 1}


def test_raise_for_status_returns_a_successful_response() -> None:
    response = Response(204, {}, b"")
    assert response.raise_for_status() is response


def test_a_4xx_becomes_a_final_client_error() -> None:
    error = Response(404, {}, b"", method="GET", url="http://x/a").error(NOW)
    assert isinstance(error, HTTPClientStatusError)
    assert isinstance(error, ShipyardError)
    assert error.status == 404
    assert is_client_error(error)
    assert "GET http://x/a answered 404 Not Found" in str(error)


def test_a_429_carries_its_retry_after_and_is_not_final() -> None:
    error = Response(429, {"Retry-After": "3"}, b"").error(NOW)
    assert error.retry_after == 3.0
    assert not is_client_error(error)


def test_a_retry_after_on_a_500_is_not_a_hint() -> None:
    error = Response(500, {"Retry-After": "3"}, b"").error(NOW)
    assert isinstance(error, HTTPServerStatusError)
    assert error.retry_after is None


def test_raise_for_status_raises_the_typed_error() -> None:
    with pytest.raises(HTTPServerStatusError) as caught:
        Response(503, {}, b"").raise_for_status()
    assert caught.value.status == 503
