"""Probes: what liveness, readiness and startup answer, and how checks are run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipyard.core import ConfigError, ManualClock, SystemClock
from shipyard.health import Probes, Status


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionError("database is down")


class Counter:
    """An async check that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def test_liveness_passes_with_no_checks() -> None:
    report = await Probes(clock=ManualClock()).liveness()
    assert report.status is Status.PASS
    assert report.http_status == 200


async def test_liveness_ignores_failing_dependencies() -> None:
    probes = Probes(clock=ManualClock())
    probes.add_readiness("postgres", failing)
    assert (await probes.liveness()).status is Status.PASS
    assert (await probes.readiness()).status is Status.FAIL


async def test_failing_liveness_check_fails_liveness() -> None:
    probes = Probes(clock=ManualClock())
    probes.add_liveness("event-loop", failing)
    report = await probes.liveness()
    assert report.status is Status.FAIL
    assert report.http_status == 503


async def test_readiness_fails_when_a_critical_dependency_fails() -> None:
    probes = Probes(clock=ManualClock())
    probes.add_readiness("postgres", failing)
    probes.add_readiness("redis", passing)
    report = await probes.readiness()
    assert report.status is Status.FAIL
    assert report.http_status == 503
    by_name = {check.name: check for check in report.checks}
    assert by_name["postgres"].status is Status.FAIL
    assert by_name["postgres"].error == "ConnectionError: database is down"
    assert by_name["redis"].status is Status.PASS


async def test_failing_non_critical_dependency_only_warns() -> None:
    probes = Probes(clock=ManualClock())
    probes.add_readiness("postgres", passing)
    probes.add_readiness("recommendations", failing, critical=False)
    report = await probes.readiness()
    assert report.status is Status.WARN
    assert report.http_status == 200
    assert [c.status for c in report.checks] == [Status.PASS, Status.WARN]


async def test_returned_string_is_the_checks_detail() -> None:
    async def with_detail() -> str:
        return "42 rows"

    probes = Probes(clock=ManualClock())
    probes.add_readiness("db", with_detail)
    (result,) = (await probes.readiness()).checks
    assert result.status is Status.PASS
    assert result.detail == "42 rows"


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to have started: run one after the other, the first
    # would wait until the budget ran out and fail.
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def check_a() -> None:
        a_started.set()
        await b_started.wait()

    async def check_b() -> None:
        b_started.set()
        await a_started.wait()

    probes = Probes(clock=SystemClock(), budget=5.0)
    probes.add_readiness("a", check_a)
    probes.add_readiness("b", check_b)
    report = await probes.readiness()
    assert report.status is Status.PASS, report


async def test_hung_check_times_out_at_its_own_timeout() -> None:
    clock = ManualClock()
    started = asyncio.Event()

    async def hung() -> None:
        started.set()
        await asyncio.Event().wait()

    probes = Probes(clock=clock, budget=0.1)
    probes.add_readiness("hung", hung, timeout=0.05)
    probes.add_readiness("fine", passing)
    probe = asyncio.create_task(probes.readiness())
    await started.wait()
    clock.advance(0.05)
    report = await probe
    assert report.status is Status.FAIL
    hung_result = report.checks[0]
    assert hung_result.timed_out
    assert hung_result.error == "timed out after 0.05s"
    assert hung_result.duration_ms == pytest.approx(50.0)
    assert report.checks[1].status is Status.PASS


async def test_checks_still_running_at_the_budget_count_as_timed_out() -> None:
    clock = ManualClock()
    started = asyncio.Event()

    async def hung() -> None:
        started.set()
        await asyncio.Event().wait()

    probes = Probes(clock=clock, budget=0.1)
    probes.add_readiness("hung", hung, timeout=10.0)
    probe = asyncio.create_task(probes.readiness())
    await started.wait()
    clock.advance(0.0999)
    assert not probe.done()
    clock.advance(0.0001)
    (result,) = (await probe).checks
    assert result.timed_out
    assert "budget" in (result.error or "")


async def test_hung_check_times_out_on_the_real_clock() -> None:
    async def hung() -> None:
        await asyncio.Event().wait()

    probes = Probes(budget=0.05)
    probes.add_readiness("hung", hung)
    (result,) = (await probes.readiness()).checks
    assert result.status is Status.FAIL
    assert result.timed_out


async def test_a_check_that_swallows_cancellation_is_still_a_timeout() -> None:
    clock = ManualClock()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    probes = Probes(clock=clock)
    probes.add_readiness("stubborn", stubborn)
    probe = asyncio.create_task(probes.readiness())
    await started.wait()
    clock.advance(0.1)
    (result,) = (await probe).checks
    assert result.timed_out


async def test_reports_are_reused_within_the_cache_ttl() -> None:
    clock = ManualClock()
    check = Counter()
    probes = Probes(clock=clock, cache_ttl=1.0)
    probes.add_readiness("db", check)
    for _ in range(5):
        await probes.readiness()
    assert check.calls == 1
    clock.advance(0.999)
    await probes.readiness()
    assert check.calls == 1
    clock.advance(0.001)
    await probes.readiness()
    assert check.calls == 2


async def test_zero_cache_ttl_runs_checks_every_probe() -> None:
    check = Counter()
    probes = Probes(clock=ManualClock(), cache_ttl=0)
    probes.add_readiness("db", check)
    await probes.readiness()
    await probes.readiness()
    assert check.calls == 2


async def test_concurrent_probes_share_one_round_of_checks() -> None:
    release = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    probes = Probes(clock=ManualClock(), cache_ttl=0)
    probes.add_readiness("db", slow)
    storm = [asyncio.create_task(probes.readiness()) for _ in range(10)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    release.set()
    reports = await asyncio.gather(*storm)
    assert calls == 1
    assert all(report.status is Status.PASS for report in reports)


async def test_draining_fails_readiness_without_running_checks() -> None:
    check = Counter()
    probes = Probes(clock=ManualClock(), cache_ttl=0)
    probes.add_readiness("db", check)
    probes.set_draining()
    report = await probes.readiness()
    assert report.status is Status.FAIL
    assert report.reason == "draining"
    assert check.calls == 0
    assert (await probes.liveness()).status is Status.PASS
    probes.set_draining(False)
    assert (await probes.readiness()).status is Status.PASS


async def test_startup_fails_until_marked_started_then_passes() -> None:
    probes = Probes(clock=ManualClock())
    report = await probes.startup()
    assert report.status is Status.FAIL
    assert report.reason == "starting"
    probes.mark_started()
    assert (await probes.startup()).status is Status.PASS


async def test_startup_passes_for_good_once_its_checks_pass() -> None:
    clock = ManualClock()
    healthy = False

    async def migrations_done() -> None:
        if not healthy:
            raise RuntimeError("migrations still running")

    probes = Probes(clock=clock)
    probes.add_startup("migrations", migrations_done)
    assert (await probes.startup()).status is Status.FAIL
    assert not probes.started
    healthy = True
    clock.advance(1.0)
    assert (await probes.startup()).status is Status.PASS
    healthy = False
    clock.advance(1.0)
    assert (await probes.startup()).status is Status.PASS
    assert probes.started


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": -1}, "budget"),
        ({"cache_ttl": -0.5}, "cache_ttl"),
    ],
)
def test_invalid_probe_settings_are_rejected_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Probes(**kwargs)
    assert caught.value.field == field


def test_invalid_checks_are_rejected_at_registration() -> None:
    probes = Probes()
    probes.add_readiness("db", passing)
    with pytest.raises(ConfigError, match="unique"):
        probes.add_readiness("db", passing)
    with pytest.raises(ConfigError) as caught:
        probes.add_readiness("slow", passing, timeout=0)
    assert caught.value.field == "timeout"
    with pytest.raises(ConfigError) as caught:
        probes.add_readiness("sync", lambda: None)  # type: ignore[arg-type, return-value]
    assert caught.value.field == "check"
    with pytest.raises(ConfigError) as caught:
        probes.add_readiness("", passing)
    assert caught.value.field == "name"


def test_detailed_output_defaults_to_minimal_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPYARD_ENV", "production")
    assert Probes().detailed is False
    assert Probes(detailed=True).detailed is True
    monkeypatch.setenv("SHIPYARD_ENV", "development")
    assert Probes().detailed is True


async def test_aclose_closes_checks_that_hold_clients() -> None:
    class Closable:
        closed = 0

        async def __call__(self) -> None:
            return None

        async def aclose(self) -> None:
            self.closed += 1

    check = Closable()
    probes = Probes()
    probes.add_readiness("db", check)
    probes.add_startup("db", check)
    await probes.aclose()
    assert check.closed == 1
