"""What a probe answers: the overall status and each check's result, as data and as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec


class Status(StrEnum):
    """A check's or a probe's outcome, in the health+json vocabulary."""

    PASS = "pass"
    WARN = "warn"
    """Something non-critical is failing; the service still takes traffic."""
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check in one probe.

    A failing non-critical check reports ``WARN``. ``error`` (why it failed) and ``detail``
    (what a passing check returned) are already redacted: no URLs, secrets or hosts.
    """

    name: str
    status: Status
    critical: bool
    duration_ms: float
    error: str | None = None
    detail: str | None = None
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of this result in a detailed probe response."""
        body: dict[str, Any] = {
            "name": self.name,
            "status": self.status.value,
            "critical": self.critical,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.error is not None:
            body["error"] = self.error
        if self.detail is not None:
            body["detail"] = self.detail
        return body


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The answer of one probe (liveness, readiness or startup).

    ``reason`` explains a status that no check produced: ``"draining"`` or ``"starting"``.
    """

    status: Status
    checks: tuple[CheckResult, ...] = ()
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the probe passes (``PASS`` or ``WARN``)."""
        return self.status is not Status.FAIL

    @property
    def http_status(self) -> int:
        """200 when the probe passes (warnings included), 503 when it fails."""
        return 200 if self.ok else 503

    def to_dict(self, *, detailed: bool) -> dict[str, Any]:
        """The JSON body: just the status, or (``detailed``) every check's result too."""
        if not detailed:
            return {"status": self.status.value}
        body: dict[str, Any] = {"status": self.status.value}
        if self.reason is not None:
            body["reason"] = self.reason
        body["checks"] = [check.to_dict() for check in self.checks]
        return body

    def to_json(self, *, detailed: bool) -> bytes:
        """``to_dict`` encoded as UTF-8 JSON."""
        return msgspec.json.encode(self.to_dict(detailed=detailed))


def overall_status(results: tuple[CheckResult, ...]) -> Status:
    """FAIL if any critical check failed, WARN if anything else is off, PASS otherwise."""
    status = Status.PASS
    for result in results:
        if result.status is Status.FAIL:
            return Status.FAIL
        if result.status is Status.WARN:
            status = Status.WARN
    return status
