"""Consul's JSON on the wire → typed registry objects, with reasons a client can act on.

Keys are matched case-insensitively and without underscores, because clients disagree:
py-consul sends ``name``, ``id``, ``checks``; the npm client and curl examples send
``Name``, ``ID``, ``Check``; some send ``deregister_critical_service_after``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from shipyard.core.errors import ShipyardError
from shipyard.discovery.registry.catalog import (
    CheckDefinition,
    CheckKind,
    ServiceDefinition,
    Status,
)

MAX_WAIT = 600.0
"""Longest blocking-query wait Consul allows (10 minutes)."""
DEFAULT_WAIT = 300.0
DEFAULT_CHECK_TIMEOUT = 10.0


class WireError(ShipyardError, ValueError):
    """A request body or parameter is malformed; ``field`` names the offending part."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(field: str, value: object) -> float:
    """A Go/Consul duration (``"10s"``, ``"500ms"``, ``"1m30s"``, or nanoseconds) in seconds."""
    if isinstance(value, bool):
        raise WireError(field, f"expected a duration like '10s', got {value!r}")
    if isinstance(value, int | float):
        # Go marshals time.Duration as integer nanoseconds.
        if not math.isfinite(value) or value < 0:
            raise WireError(field, f"expected a non-negative duration, got {value!r}")
        return float(value) / 1e9
    if not isinstance(value, str):
        raise WireError(field, f"expected a duration like '10s', got {value!r}")
    text = value.strip()
    if text == "0":
        return 0.0
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise WireError(
            field,
            f"invalid duration {value!r}: use a number with a unit, e.g. '10s', '500ms', '1m'",
        )
    return total


def format_duration(seconds: float) -> str:
    """Seconds as a Consul duration string (``"10s"``, ``"500ms"``)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def decode_json(body: bytes, what: str = "body") -> Any:
    """Parse a JSON request body, or raise :class:`WireError`."""
    if not body.strip():
        raise WireError(what, "empty body: send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError, bad UTF-8 and over-long integer literals.
        raise WireError(what, f"malformed JSON ({error})") from None


def _normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key.lower().replace("_", ""): value for key, value in raw.items()}


def _object(field: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WireError(field, f"expected a JSON object, got {type(value).__name__}")
    return _normalise(value)


def _string(field: str, value: object, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise WireError(field, "is required")
        return ""
    if not isinstance(value, str):
        raise WireError(field, f"expected a string, got {value!r}")
    if required and not value:
        raise WireError(field, "must not be empty")
    return value


def _port(field: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(field, f"expected an integer port 0-65535, got {value!r}")
    if not 0 <= value <= 65535:
        raise WireError(field, f"expected an integer port 0-65535, got {value}")
    return value


def _string_list(field: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError(field, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _string_map(field: str, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WireError(field, f"expected an object of string values, got {value!r}")
    return tuple(value.items())


def _headers(field: str, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise WireError(field, f"expected an object of header lists, got {value!r}")
    pairs: list[tuple[str, str]] = []
    for name, values in value.items():
        for item in _string_list(f"{field}.{name}", values):
            pairs.append((name, item))
    return tuple(pairs)


def parse_status(field: str, value: object) -> Status:
    """``passing`` / ``warning`` / ``critical``."""
    if isinstance(value, str):
        try:
            return Status(value.lower())
        except ValueError:
            pass
    raise WireError(field, f"expected one of passing, warning, critical; got {value!r}")


_UNSUPPORTED_KINDS = ("args", "script", "grpc", "dockercontainerid", "h2ping", "aliasservice")


def parse_check(
    raw: object,
    *,
    field: str,
    service_id: str,
    service_name: str,
    default_id: str,
) -> CheckDefinition:
    """One check of a service registration."""
    data = _object(field, raw)
    http = _string(f"{field}.HTTP", data.get("http"))
    tcp = _string(f"{field}.TCP", data.get("tcp"))
    ttl_raw = data.get("ttl")
    chosen = [kind for kind, given in (("HTTP", http), ("TCP", tcp), ("TTL", ttl_raw)) if given]
    if len(chosen) > 1:
        raise WireError(field, f"give exactly one of HTTP, TCP, TTL (got {', '.join(chosen)})")
    if not chosen:
        unsupported = [k for k in _UNSUPPORTED_KINDS if k in data]
        if unsupported:
            raise WireError(
                field,
                f"unsupported check kind {unsupported[0]!r}: this registry runs HTTP, TCP "
                "and TTL checks",
            )
        raise WireError(field, "unknown check kind: give one of HTTP, TCP, TTL")
    check_id = _string(f"{field}.CheckID", data.get("checkid") or data.get("id")) or default_id
    if check_id.startswith("attach:"):
        raise WireError(
            f"{field}.CheckID", "ids starting with 'attach:' are reserved for live connections"
        )
    name = _string(f"{field}.Name", data.get("name")) or f"Service '{service_name}' check"
    timeout = (
        parse_duration(f"{field}.Timeout", data["timeout"])
        if data.get("timeout") not in (None, "")
        else DEFAULT_CHECK_TIMEOUT
    )
    deregister = data.get("deregistercriticalserviceafter")
    deregister_after = (
        parse_duration(f"{field}.DeregisterCriticalServiceAfter", deregister)
        if deregister not in (None, "")
        else None
    )
    status = (
        parse_status(f"{field}.Status", data["status"])
        if data.get("status") not in (None, "")
        else Status.CRITICAL
    )
    common: dict[str, Any] = {
        "check_id": check_id,
        "name": name,
        "timeout": timeout,
        "deregister_after": deregister_after,
        "initial_status": status,
        "notes": _string(f"{field}.Notes", data.get("notes")),
    }
    if ttl_raw:
        ttl = parse_duration(f"{field}.TTL", ttl_raw)
        if ttl <= 0:
            raise WireError(f"{field}.TTL", "must be a positive duration, e.g. '10s'")
        return CheckDefinition(kind=CheckKind.TTL, ttl=ttl, **common)
    interval_raw = data.get("interval")
    if interval_raw in (None, ""):
        raise WireError(f"{field}.Interval", "is required for HTTP and TCP checks, e.g. '10s'")
    interval = parse_duration(f"{field}.Interval", interval_raw)
    if interval <= 0:
        raise WireError(f"{field}.Interval", "must be a positive duration, e.g. '10s'")
    if http:
        if not http.startswith(("http://", "https://")):
            raise WireError(f"{field}.HTTP", f"expected an http:// or https:// URL, got {http!r}")
        method = _string(f"{field}.Method", data.get("method")) or "GET"
        return CheckDefinition(
            kind=CheckKind.HTTP,
            target=http,
            interval=interval,
            method=method.upper(),
            headers=_headers(f"{field}.Header", data.get("header")),
            **common,
        )
    host, _, port = tcp.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise WireError(f"{field}.TCP", f"expected host:port, got {tcp!r}")
    return CheckDefinition(kind=CheckKind.TCP, target=tcp, interval=interval, **common)


def parse_registration(raw: object) -> ServiceDefinition:
    """The body of ``PUT /v1/agent/service/register``."""
    data = _object("body", raw)
    name = _string("Name", data.get("name"), required=True)
    service_id = _string("ID", data.get("id")) or name
    raw_checks: list[tuple[str, object]] = []
    if data.get("check") is not None:
        raw_checks.append(("Check", data["check"]))
    if data.get("checks") is not None:
        listed = data["checks"]
        if not isinstance(listed, list):
            raise WireError("Checks", f"expected a list of check objects, got {listed!r}")
        raw_checks.extend((f"Checks[{i}]", item) for i, item in enumerate(listed))
    checks: list[CheckDefinition] = []
    for position, (field, item) in enumerate(raw_checks, start=1):
        # Consul's ids for embedded checks: service:<id>, or service:<id>:N with several.
        default_id = (
            f"service:{service_id}" if len(raw_checks) == 1 else f"service:{service_id}:{position}"
        )
        checks.append(
            parse_check(
                item,
                field=field,
                service_id=service_id,
                service_name=name,
                default_id=default_id,
            )
        )
    ids = [c.check_id for c in checks]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise WireError("Checks", f"CheckID {duplicate!r} is used twice")
    return ServiceDefinition(
        service_id=service_id,
        name=name,
        address=_string("Address", data.get("address")),
        port=_port("Port", data.get("port")),
        tags=_string_list("Tags", data.get("tags")),
        meta=_string_map("Meta", data.get("meta")),
        checks=tuple(checks),
    )


def parse_check_update(raw: object) -> tuple[Status, str]:
    """The body of ``PUT /v1/agent/check/update/{id}``: status and output."""
    data = _object("body", raw)
    status = parse_status("Status", data.get("status"))
    return status, _string("Output", data.get("output"))


def parse_index(value: str | None) -> int | None:
    """The ``index`` query parameter of a blocking query (``None`` or 0: do not block)."""
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise WireError("index", f"expected a non-negative integer, got {value!r}")
    return int(value) or None


def parse_wait(value: str | None) -> float:
    """The ``wait`` query parameter, capped at Consul's 10 minutes."""
    if value is None or value == "":
        return DEFAULT_WAIT
    return min(parse_duration("wait", value), MAX_WAIT)


def parse_flag(value: str | None) -> bool:
    """A Consul boolean query flag: present-empty, ``1`` or ``true`` mean yes."""
    if value is None:
        return False
    return value.lower() in ("", "1", "true", "yes")
