"""Probe responses never show connection strings, passwords or hosts."""

from __future__ import annotations

from shipyard.core import ManualClock
from shipyard.health import Probes, redact

DSN = "postgresql://orders:s3cret-Pa55@db.internal.example:5432/orders"


def test_url_with_credentials_is_replaced() -> None:
    message = redact(f"could not connect to {DSN}: connection refused")
    assert "s3cret" not in message
    assert "db.internal" not in message
    assert "orders:" not in message
    assert message == "could not connect to postgresql://<redacted>: connection refused"


def test_key_value_dsn_secrets_and_hosts_are_replaced() -> None:
    message = redact("connect failed: host=10.1.2.3 port=5432 user=app password=s3cret dbname=x")
    assert "s3cret" not in message
    assert "10.1.2.3" not in message
    assert "app" not in message
    assert "password=<redacted>" in message


def test_socket_addresses_are_replaced() -> None:
    assert redact("Connect call failed ('10.0.0.7', 6379)") == "Connect call failed (<host>)"
    assert redact("Error 111 connecting to cache.internal:6379.") == (
        "Error 111 connecting to <host>."
    )
    assert "::1" not in redact("refused by [::1]:4222")


def test_long_messages_are_cut_to_one_short_line() -> None:
    message = redact("line one\nline two " + "x" * 500)
    assert "\n" not in message
    assert len(message) <= 200


async def test_a_failing_checks_password_never_reaches_the_response() -> None:
    async def leaky() -> None:
        raise ConnectionError(f"cannot reach {DSN} (password=s3cret-Pa55)")

    probes = Probes(clock=ManualClock(), detailed=True)
    probes.add_readiness("postgres", leaky)
    body = (await probes.readiness()).to_json(detailed=True)
    assert b"s3cret" not in body
    assert b"db.internal" not in body
    assert b"postgres" in body


async def test_a_checks_detail_is_redacted_too() -> None:
    async def chatty() -> str:
        return f"connected to {DSN}"

    probes = Probes(clock=ManualClock())
    probes.add_readiness("postgres", chatty)
    (result,) = (await probes.readiness()).checks
    assert result.detail == "connected to postgresql://<redacted>"
