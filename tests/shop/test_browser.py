"""The dashboard of the real reference shop in headless Chromium (issue 9's Playwright
test): the shop runs under its supervisor, the dashboard is served as ``shipyard up``
serves it (the supervisor as its process control), and browser/shop.mjs clicks a 100%
error rate into the payment provider, places orders through the gateway with demo JWTs
until the page shows payments' breaker OPEN, clicks the fault clear, and waits until the
page shows a declined order's saga COMPENSATED.

The shop's orders wait out an outage (a charge with an unknown outcome is retried until
payments decides it) rather than compensate; a declined card is a definite "no", so its
saga always compensates — once orders' own breaker towards payments, opened by the
outage's failed retries, lets calls through again (up to its 30 s reset)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
from examples.shop.auth import mint_token
from examples.shop.control import SupervisorControl
from examples.shop.supervisor import Supervisor

from shipyard.dashboard import Dashboard
from tests.dashboard.test_browser import BROWSER_DIR, dashboard_server, require_playwright
from tests.shop.driver import ShopDriver

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_ORDERS = 60
"""Orders placed at most (one every ~0.3 s) before the page must show the breaker open."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> tuple[str, str]:
    """node and chromium — checked before the (slow) shop starts."""
    return require_playwright()


async def test_the_shops_page_shows_payments_breaker_open_and_sagas_compensated_after_a_click(
    playwright: tuple[str, str], shop: Supervisor, driver: ShopDriver, tmp_path: Path
) -> None:
    node, chromium = playwright
    screenshot = tmp_path / "shop-dashboard.png"
    screenshot_open = tmp_path / "shop-dashboard-breaker-open.png"
    dashboard = Dashboard(
        registry_url=shop.settings.registry,
        saga_api_url=shop.url("orders"),
        chaos_token=shop.settings.chaos_token,
        control=SupervisorControl(shop),
    )
    jwts = [mint_token(shop.settings.jwt_secret, f"u-{n}") for n in range(1, 6)]
    async with dashboard_server(dashboard) as dashboard_url:
        process = await asyncio.create_subprocess_exec(
            node,
            str(BROWSER_DIR / "shop.mjs"),
            cwd=BROWSER_DIR,
            env={
                **os.environ,
                "DASHBOARD_URL": dashboard_url,
                "GATEWAY_URL": shop.gateway_url,
                "CHAOS_TOKEN": shop.settings.chaos_token,
                "JWTS": json.dumps(jwts),
                "DECLINED_JWT": mint_token(shop.settings.jwt_secret, "declined-1"),
                "SCREENSHOT": str(screenshot),
                "SCREENSHOT_OPEN": str(screenshot_open),
                "USER_DATA_DIR": str(tmp_path / "chromium-profile"),
                "CHROMIUM": chromium,
                "MAX_ORDERS": str(MAX_ORDERS),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # A bound on a hung browser, not a speed assertion.
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    admin = {"X-Chaos-Token": shop.settings.chaos_token}
    async with driver.http.get(shop.url("payment-provider") + "/admin/chaos", headers=admin) as r:
        faults = await r.json()

    assert process.returncode == 0, stderr.decode()[-4000:]
    shown = json.loads(stdout.decode().strip().splitlines()[-1])
    assert shown["problems"] == []
    assert shown["breakerBefore"] in ("closed", None)  # None: no charge sent yet
    assert shown["breaker"] == "open"
    assert "payment-provider" in shown["breakersOpen"]
    assert shown["clipped"] == []
    assert any(p.startswith("orders-") and p.endswith(" orders/api") for p in shown["pools"])
    assert any(p.endswith(" payments-inbox/background") for p in shown["pools"])
    assert shown["outage"], "no order was placed during the outage"
    assert len(shown["outage"]) <= MAX_ORDERS
    assert shown["compensated"] > shown["compensatedBefore"]
    rows = {row["saga"]: row for row in shown["compensatedRows"]}
    declined = rows[shown["declined"]]
    assert declined["failed"].startswith("charge"), declined
    assert "card declined" in declined["failed"], declined
    assert "↩ reserve" in declined["timeline"], declined
    assert declined["timeline"].endswith("compensated"), declined
    # The page showed the injected 100% on the provider; the clear click removed it there.
    assert faults == {"faults": []}
    assert screenshot_open.stat().st_size > 0
    assert screenshot.stat().st_size > 0
