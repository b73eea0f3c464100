"""``shipyard projections``: status, rebuild and resume from the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.cli import main
from shipyard.eventsourcing import ProjectionRunner, Repository, open_event_store
from shipyard.storage import open_database
from tests.eventsourcing.read_models import PROJECTIONS, REGISTRY
from tests.eventsourcing.shop import Order

MODULE = "tests.eventsourcing.read_models"


async def _prepare(url: str) -> None:
    db = await open_database(url)
    try:
        store = await open_event_store(db)
        repo = Repository(store, Order, registry=REGISTRY)
        for i in range(3):
            order = Order(f"o{i}")
            order.place("ada", 100)
            await repo.save(order)
        runner = ProjectionRunner(store, REGISTRY, PROJECTIONS)
        await runner.install()
        await runner.catch_up()
    finally:
        await db.close()


def test_rebuild_swaps_in_a_fresh_table_and_status_shows_the_new_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    asyncio.run(_prepare(url))
    common = ["--projections", f"{MODULE}:PROJECTIONS", "--registry", f"{MODULE}:REGISTRY"]

    assert main(["projections", "--db", url, "rebuild", "accounting_totals", *common]) == 0
    assert main(["projections", "--db", url, "status"]) == 0

    out = capsys.readouterr().out
    assert "accounting_totals rebuilt from 3 events" in out
    assert "accounting_totals            running  generation=2" in out
    assert "customer_orders              running  generation=1" in out


def test_rebuilding_an_unknown_projection_lists_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    asyncio.run(_prepare(url))

    status = main(
        [
            "projections",
            "--db",
            url,
            "rebuild",
            "nope",
            "--projections",
            f"{MODULE}:PROJECTIONS",
            "--registry",
            f"{MODULE}:REGISTRY",
        ]
    )

    assert status == 1
    assert "no projection named 'nope'" in capsys.readouterr().out
