"""Every end-to-end test of test_end_to_end.py again, on the distributed profile: a
PostgreSQL database per service, NATS JetStream and Redis (the issue asks for the same tests
passing on both profiles). The fixtures below replace the embedded shop."""

from __future__ import annotations

from examples.shop.supervisor import Supervisor

from tests.shop.test_distributed import driver, shop
from tests.shop.test_end_to_end import *  # noqa: F403 - the same tests, collected here too
from tests.shop.test_end_to_end import pytestmark

__all__ = ["driver", "pytestmark", "shop"]


async def test_this_module_runs_on_the_distributed_profile(shop: Supervisor) -> None:
    assert shop.settings.database_url("orders").startswith("postgresql://")
    assert shop.settings.bus.startswith("nats://")
