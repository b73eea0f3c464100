"""Consul JSON → typed registrations: case-insensitive keys, check ids, durations, reasons."""

from __future__ import annotations

import pytest

from shipyard.discovery.registry import CheckKind, Status, WireError, parse_duration
from shipyard.discovery.registry.wire import parse_flag, parse_registration, parse_wait


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("1m", 60.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0)],
)
def test_consul_duration_strings_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration("Interval", text) == pytest.approx(seconds)


def test_numeric_durations_are_nanoseconds_as_go_marshals_them() -> None:
    assert parse_duration("TTL", 2_000_000_000) == pytest.approx(2.0)


@pytest.mark.parametrize("text", ["10", "ten seconds", "10 s", "s", "", "-1s"])
def test_malformed_durations_name_the_field(text: str) -> None:
    with pytest.raises(WireError, match="Interval"):
        parse_duration("Interval", text)


def test_lowercase_keys_from_py_consul_are_understood() -> None:
    service = parse_registration(
        {
            "name": "web",
            "id": "web-1",
            "port": 8080,
            "tags": ["v1"],
            "meta": {"zone": "a"},
            "checks": [{"http": "http://127.0.0.1:1/health", "interval": "1s"}],
        }
    )
    assert (service.service_id, service.name, service.port) == ("web-1", "web", 8080)
    assert service.tags == ("v1",)
    assert service.meta == (("zone", "a"),)
    assert service.checks[0].kind is CheckKind.HTTP


def test_capitalised_keys_and_a_single_check_from_other_clients_are_understood() -> None:
    service = parse_registration(
        {"Name": "web", "Port": 1, "Check": {"TTL": "15s", "Status": "passing"}}
    )
    (check,) = service.checks
    assert service.service_id == "web"
    assert check.check_id == "service:web"
    assert check.kind is CheckKind.TTL
    assert check.ttl == 15.0
    assert check.initial_status is Status.PASSING


def test_several_embedded_checks_are_numbered_after_the_service_id() -> None:
    service = parse_registration(
        {
            "Name": "web",
            "ID": "web-2",
            "Check": {"TTL": "5s"},
            "Checks": [{"TCP": "127.0.0.1:80", "Interval": "1s"}],
        }
    )
    assert [c.check_id for c in service.checks] == ["service:web-2:1", "service:web-2:2"]


def test_check_defaults_follow_consul() -> None:
    (check,) = parse_registration(
        {"Name": "web", "Check": {"HTTP": "http://x/h", "Interval": "10s"}}
    ).checks
    assert check.timeout == 10.0
    assert check.initial_status is Status.CRITICAL
    assert check.deregister_after is None
    assert check.method == "GET"


def test_snake_case_deregister_key_is_understood() -> None:
    (check,) = parse_registration(
        {"name": "web", "check": {"ttl": "5s", "deregister_critical_service_after": "1m"}}
    ).checks
    assert check.deregister_after == 60.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Port": 1}, "Name"),
        ({"Name": "web", "Port": "abc"}, "Port"),
        ({"Name": "web", "Port": 70000}, "Port"),
        ({"Name": "web", "Tags": "a,b"}, "Tags"),
        ({"Name": "web", "Meta": {"a": 1}}, "Meta"),
        ({"Name": "web", "Checks": {"TTL": "1s"}}, "Checks"),
        ({"Name": "web", "Check": {"Interval": "1s"}}, "Check"),
        ({"Name": "web", "Check": {"Args": ["true"], "Interval": "1s"}}, "Check"),
        ({"Name": "web", "Check": {"HTTP": "http://x", "Interval": "soon"}}, "Check.Interval"),
        ({"Name": "web", "Check": {"HTTP": "http://x"}}, "Check.Interval"),
        ({"Name": "web", "Check": {"TCP": "nohost", "Interval": "1s"}}, "Check.TCP"),
        ({"Name": "web", "Check": {"TTL": "1s", "Status": "fine"}}, "Check.Status"),
        ({"Name": "web", "Check": {"TTL": "1s", "HTTP": "http://x"}}, "Check"),
        ({"Name": "web", "Check": {"TTL": "1s", "CheckID": "attach:web"}}, "Check.CheckID"),
        (["web"], "body"),
    ],
)
def test_invalid_registrations_say_which_field_is_wrong(body: object, field: str) -> None:
    with pytest.raises(WireError) as raised:
        parse_registration(body)
    assert raised.value.field == field


def test_blocking_wait_is_capped_at_ten_minutes_and_defaults_to_five() -> None:
    assert parse_wait("1h") == 600.0
    assert parse_wait(None) == 300.0


@pytest.mark.parametrize(
    ("raw", "expected"), [("", True), ("1", True), ("true", True), (None, False), ("0", False)]
)
def test_passing_flag_accepts_consul_spellings(raw: str | None, expected: bool) -> None:
    assert parse_flag(raw) is expected
