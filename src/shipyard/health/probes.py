"""Liveness, readiness and startup probes, and the checks each one runs.

Kubernetes conventions, because that is what orchestrators and load balancers call:

* liveness — can this process make progress? No dependency checks here: a database outage
  that failed liveness would get every pod restarted at once, fixing nothing.
* readiness — should traffic be sent here? Dependency checks run concurrently, each with
  its own timeout, the whole probe within a budget; results are cached briefly so a probe
  storm does not become a load test of the database. ``set_draining()`` fails it on purpose
  during graceful shutdown.
* startup — has the service finished starting? Fails until ``mark_started()`` (or until the
  startup checks pass once), then passes for the rest of the process's life.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger, validation
from shipyard.health.redaction import describe_error, redact
from shipyard.health.report import CheckResult, HealthReport, Status, overall_status
from shipyard.resilience.policy import is_async_callable

if TYPE_CHECKING:
    from shipyard.health.asgi import HealthApp

Check = Callable[[], Awaitable[str | None]]
"""A check: ``async def check() -> None | str``. Raising fails it; a returned string is a
detail shown in detailed responses (e.g. ``"42 GiB free"``)."""

ProbeKind = Literal["liveness", "readiness", "startup"]

_log = get_logger("shipyard.health")

_PASS = HealthReport(Status.PASS)


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    check: Check
    critical: bool
    # min(own timeout, probe budget), decided at registration: all checks start together,
    # so "still running when the budget runs out" is the same as a timeout at the budget.
    timeout: float
    timeout_reason: str


class _Probe:
    """One probe's checks, its cached report and the evaluation in flight."""

    __slots__ = ("cached", "cached_at", "checks", "in_flight", "kind", "last_status")

    def __init__(self, kind: ProbeKind) -> None:
        self.kind = kind
        self.checks: tuple[_Registered, ...] = ()
        self.cached: HealthReport | None = None
        self.cached_at = 0.0
        self.in_flight: asyncio.Task[HealthReport] | None = None
        self.last_status: Status | None = None


def _detailed_default() -> bool:
    return os.environ.get("SHIPYARD_ENV", "").strip().lower() != "production"


class Probes:
    """The three probes of one service and their checks.

    ``budget`` bounds every probe (seconds; checks still running then count as timed out);
    ``cache_ttl`` is how long a probe's report is reused (0 disables caching); ``detailed``
    selects the JSON body — each check's result (development) or just the status
    (production). ``None`` means: minimal when ``SHIPYARD_ENV=production``, detailed
    otherwise.
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        budget: float = 0.1,
        cache_ttl: float = 1.0,
        detailed: bool | None = None,
    ) -> None:
        self.budget = validation.positive("budget", budget)
        self.cache_ttl = validation.non_negative("cache_ttl", cache_ttl)
        self.detailed = _detailed_default() if detailed is None else bool(detailed)
        self._clock = clock
        self._probes: dict[ProbeKind, _Probe] = {
            kind: _Probe(kind) for kind in ("liveness", "readiness", "startup")
        }
        self._draining = False
        self._started = False

    # -- registration ---------------------------------------------------------------

    def add_liveness(
        self, name: str, check: Check, *, timeout: float | None = None, critical: bool = True
    ) -> None:
        """Add a check that says whether the process can make progress (e.g. event-loop
        lag). Never add dependency checks here: use ``add_readiness``."""
        self._add("liveness", name, check, timeout, critical)

    def add_readiness(
        self, name: str, check: Check, *, timeout: float | None = None, critical: bool = True
    ) -> None:
        """Add a dependency check to readiness. ``timeout`` defaults to (and is capped by)
        the probe budget; a failing non-critical check makes the probe ``warn`` (still 200)
        instead of fail."""
        self._add("readiness", name, check, timeout, critical)

    def add_startup(
        self, name: str, check: Check, *, timeout: float | None = None, critical: bool = True
    ) -> None:
        """Add a check that must pass once before the startup probe passes."""
        self._add("startup", name, check, timeout, critical)

    def _add(
        self, kind: ProbeKind, name: str, check: Check, timeout: float | None, critical: bool
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name", name, "must be a non-empty string naming the check")
        probe = self._probes[kind]
        if any(existing.name == name for existing in probe.checks):
            raise ConfigError("name", name, f"must be unique among the {kind} checks")
        if not is_async_callable(check):
            raise ConfigError(
                "check",
                check,
                "must be an async function, async def check() -> None | str "
                "(a sync check would block the event loop every probe)",
            )
        own = validation.optional_positive("timeout", timeout)
        if own is None or own >= self.budget:
            effective, reason = (
                self.budget,
                f"still running when the {self.budget:g}s budget ran out",
            )
        else:
            effective, reason = own, f"timed out after {own:g}s"
        probe.checks = (*probe.checks, _Registered(name, check, critical, effective, reason))
        probe.cached = None

    # -- lifecycle switches -----------------------------------------------------------

    def mark_started(self) -> None:
        """Declare startup finished: the startup probe passes from now on."""
        self._started = True

    @property
    def started(self) -> bool:
        """True once ``mark_started()`` was called or the startup checks passed."""
        return self._started

    def set_draining(self, draining: bool = True) -> None:
        """Fail readiness on purpose (graceful shutdown: stop new traffic, finish the rest)."""
        self._draining = draining

    @property
    def draining(self) -> bool:
        """True while readiness is failed on purpose by ``set_draining()``."""
        return self._draining

    # -- probes -----------------------------------------------------------------------

    async def liveness(self) -> HealthReport:
        """Run (or reuse) the liveness checks. Passes when there are none."""
        probe = self._probes["liveness"]
        if not probe.checks:
            return _PASS
        return await self._report(probe)

    async def readiness(self) -> HealthReport:
        """Run (or reuse) the dependency checks; fails at once while draining."""
        if self._draining:
            return HealthReport(Status.FAIL, reason="draining")
        return await self._report(self._probes["readiness"])

    async def startup(self) -> HealthReport:
        """Pass once started; before that run the startup checks (if any)."""
        if self._started:
            return _PASS
        probe = self._probes["startup"]
        if not probe.checks:
            return HealthReport(Status.FAIL, reason="starting")
        report = await self._report(probe)
        if report.ok:
            self._started = True
        return report

    async def probe(self, kind: ProbeKind) -> HealthReport:
        """The report of the probe named ``kind``."""
        if kind == "liveness":
            return await self.liveness()
        if kind == "readiness":
            return await self.readiness()
        return await self.startup()

    def asgi_app(self) -> HealthApp:
        """A raw ASGI app serving ``/live``, ``/ready`` and ``/startup`` (also under
        ``/health/``), for ``Mount("/health", app=...)`` or to run on its own."""
        from shipyard.health.asgi import HealthApp

        return HealthApp(self)

    async def aclose(self) -> None:
        """Close what the checks opened (clients created lazily from URLs)."""
        seen: set[int] = set()
        for probe in self._probes.values():
            for registered in probe.checks:
                close = getattr(registered.check, "aclose", None)
                if close is not None and id(registered.check) not in seen:
                    seen.add(id(registered.check))
                    await close()

    # -- evaluation ---------------------------------------------------------------------

    async def _report(self, probe: _Probe) -> HealthReport:
        cached = probe.cached
        if cached is not None and self._clock.monotonic() - probe.cached_at < self.cache_ttl:
            return cached
        task = probe.in_flight
        if task is None or task.done():
            # One evaluation at a time per probe: concurrent callers share it, so a burst of
            # probes costs the dependencies one round of checks.
            task = asyncio.create_task(self._evaluate(probe))
            probe.in_flight = task
        # shield: one caller giving up must not cancel the evaluation the others wait for.
        return await asyncio.shield(task)

    async def _evaluate(self, probe: _Probe) -> HealthReport:
        if probe.checks:
            runs = [asyncio.create_task(self._run(registered)) for registered in probe.checks]
            results = tuple(await asyncio.gather(*runs))
        else:
            results = ()
        report = HealthReport(overall_status(results), results)
        probe.cached = report
        probe.cached_at = self._clock.monotonic()
        previous, probe.last_status = probe.last_status, report.status
        # Log changes only (a first "pass" is not news): operators want the moment readiness
        # flipped and why, not a line per probe.
        if report.status is not previous and not (previous is None and report.ok):
            failing = {r.name: r.error for r in report.checks if r.status is not Status.PASS}
            _log.info(
                "probe status changed",
                probe=probe.kind,
                status=report.status.value,
                failing=failing,
            )
        return report

    async def _run(self, registered: _Registered) -> CheckResult:
        clock = self._clock
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # The injected clock's timer (not asyncio.timeout) so timeouts are testable on a
        # ManualClock.
        timer = clock.call_later(registered.timeout, expire)
        started = clock.monotonic()
        try:
            detail = await registered.check()
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            return self._failed(registered, started, registered.timeout_reason, timed_out=True)
        except Exception as exc:
            return self._failed(registered, started, describe_error(exc))
        finally:
            timer.cancel()
        if expired:
            # The check swallowed the cancellation and returned late: still a timeout.
            task.uncancel()
            return self._failed(registered, started, registered.timeout_reason, timed_out=True)
        return CheckResult(
            name=registered.name,
            status=Status.PASS,
            critical=registered.critical,
            duration_ms=(clock.monotonic() - started) * 1000.0,
            detail=None if detail is None else redact(str(detail)),
        )

    def _failed(
        self, registered: _Registered, started: float, error: str, *, timed_out: bool = False
    ) -> CheckResult:
        return CheckResult(
            name=registered.name,
            status=Status.FAIL if registered.critical else Status.WARN,
            critical=registered.critical,
            duration_ms=(self._clock.monotonic() - started) * 1000.0,
            error=error,
            timed_out=timed_out,
        )
