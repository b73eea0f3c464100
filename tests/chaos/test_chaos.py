"""Fault injection: latency, errors and refusals, switched at run time by the admin API."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from shipyard.chaos import Chaos, ChaosAdminApp, ChaosMiddleware, Fault
from shipyard.core import ConfigError, ManualClock
from tests.observability.asgi import call

TOKEN = "s3cret-token"


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_with(chaos: Chaos) -> ChaosMiddleware:
    return ChaosMiddleware(Starlette(routes=[Route("/{path:path}", ok)]), chaos)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"latency": -1}, "latency"),
        ({"latency": 0.5, "latency_max": 0.1}, "latency_max"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_status": 200}, "error_status"),
        ({"refuse": "explode"}, "refuse"),
        ({"path_prefix": "orders"}, "path_prefix"),
        ({"latencyy": 1}, "fault"),
    ],
)
def test_invalid_faults_are_rejected_naming_the_field(
    settings: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Fault.from_dict(settings)
    assert raised.value.field == field


async def test_without_faults_requests_pass_untouched() -> None:
    clock = ManualClock()
    reply = await call(app_with(Chaos(clock=clock)), path="/x")
    assert (reply.status, reply.body) == (200, b"ok")
    assert clock.slept == []


async def test_fixed_latency_is_added_before_the_app_runs() -> None:
    clock = ManualClock()
    reply = await call(app_with(Chaos([Fault(latency=0.2)], clock=clock)), path="/x")
    assert reply.status == 200
    assert clock.slept == [0.2]


async def test_a_latency_range_draws_from_the_injected_random() -> None:
    clock = ManualClock()
    chaos = Chaos([Fault(latency=0.1, latency_max=0.5)], clock=clock, random=lambda: 0.5)
    await call(app_with(chaos), path="/x")
    assert clock.slept == [pytest.approx(0.3)]


async def test_the_error_rate_answers_the_configured_status_for_that_share() -> None:
    draws = iter([0.05, 0.5])
    chaos = Chaos([Fault(error_rate=0.1, error_status=502)], random=lambda: next(draws))
    app = app_with(chaos)
    injected = await call(app, path="/x")
    passed = await call(app, path="/x")
    assert injected.status == 502
    assert injected.headers["x-shipyard-chaos"] == "error"
    assert passed.status == 200


async def test_refusing_traffic_answers_every_request_with_the_error_status() -> None:
    app = app_with(Chaos([Fault(refuse="status")]))
    replies = [await call(app, path="/x") for _ in range(3)]
    assert [reply.status for reply in replies] == [503, 503, 503]


async def test_refusing_with_close_never_completes_the_response() -> None:
    reply = await call(app_with(Chaos([Fault(refuse="close")])), path="/x")
    assert not reply.complete


async def test_faults_apply_by_path_prefix_and_the_longest_prefix_wins() -> None:
    clock = ManualClock()
    chaos = Chaos(
        [
            Fault(path_prefix="/orders", refuse="status"),
            Fault(path_prefix="/orders/slow", latency=0.2),
        ],
        clock=clock,
    )
    app = app_with(chaos)
    assert (await call(app, path="/orders/1")).status == 503
    assert (await call(app, path="/orders/slow/1")).status == 200
    assert (await call(app, path="/users/1")).status == 200
    assert clock.slept == [0.2]


class TestAdmin:
    async def test_without_a_configured_token_the_endpoint_does_not_exist(self) -> None:
        admin = ChaosAdminApp(Chaos(), token=None)
        reply = await call(admin, path="/admin/chaos", headers=[("x-chaos-token", TOKEN)])
        assert reply.status == 404

    @pytest.mark.parametrize(
        "headers",
        [[], [("authorization", "Bearer wrong-token")], [("x-chaos-token", TOKEN + "x")]],
    )
    async def test_a_missing_or_wrong_token_gets_401(self, headers: list[tuple[str, str]]) -> None:
        chaos = Chaos()
        admin = ChaosAdminApp(chaos, token=TOKEN)
        body = json.dumps({"faults": [{"refuse": "status"}]}).encode()
        reply = await call(admin, "PUT", "/admin/chaos", headers=headers, body=body)
        assert reply.status == 401
        assert not chaos.enabled

    async def test_put_switches_faults_on_get_shows_them_and_an_empty_list_switches_off(
        self,
    ) -> None:
        chaos = Chaos()
        admin = ChaosAdminApp(chaos, token=TOKEN)
        auth = [("authorization", f"Bearer {TOKEN}")]
        body = json.dumps({"faults": [{"path_prefix": "/orders", "error_rate": 0.5}]}).encode()

        put = await call(admin, "PUT", "/admin/chaos", headers=auth, body=body)
        assert put.status == 200
        assert chaos.match("/orders/1") == Fault(path_prefix="/orders", error_rate=0.5)
        got = await call(admin, "GET", "/admin/chaos", headers=auth)
        assert got.json()["faults"][0]["error_rate"] == 0.5

        off = await call(admin, "PUT", "/admin/chaos", headers=auth, body=b'{"faults": []}')
        assert off.json() == {"faults": []}
        assert not chaos.enabled

    async def test_delete_clears_the_faults(self) -> None:
        chaos = Chaos([Fault(latency=1.0)])
        admin = ChaosAdminApp(chaos, token=TOKEN)
        reply = await call(admin, "DELETE", "/admin/chaos", headers=[("x-chaos-token", TOKEN)])
        assert reply.status == 200
        assert chaos.faults == ()

    @pytest.mark.parametrize(
        "body", [b"not json", b'{"faults": {}}', b'{"faults": [{"error_rate": 7}]}']
    )
    async def test_a_bad_payload_gets_400_and_changes_nothing(self, body: bytes) -> None:
        chaos = Chaos([Fault(latency=1.0)])
        admin = ChaosAdminApp(chaos, token=TOKEN)
        reply = await call(
            admin, "PUT", "/admin/chaos", headers=[("x-chaos-token", TOKEN)], body=body
        )
        assert reply.status == 400
        assert chaos.faults == (Fault(latency=1.0),)

    def test_a_short_token_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="chaos_token"):
            ChaosAdminApp(Chaos(), token="abc")
