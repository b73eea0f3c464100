"""Sagas are visible: the query API, ``shipyard saga list|show|diagram`` and Mermaid."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from shipyard.cli import main
from shipyard.core import ManualClock
from shipyard.saga import Orchestrator, saga_api, saga_diagram
from shipyard.storage import open_database
from tests.saga.order import OrderData, install_shop, order_saga


async def run_two_sagas(tmp_path: Path) -> str:
    """A completed and a compensated order saga in ``orders.db``; returns its URL."""
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    shop = await open_database(f"sqlite:///{tmp_path / 'shop.db'}")
    await install_shop(shop)
    db = await open_database(url)
    orch = Orchestrator(db, clock=ManualClock())
    orch.register(order_saga(shop))
    await orch.install()
    await orch.execute("order", OrderData("o-ok"), saga_id="o-ok")
    await orch.execute("order", OrderData("o-big", quantity=99), saga_id="o-big")
    await db.close()
    await shop.close()
    return url


async def test_the_http_api_lists_by_state_shows_timelines_and_404s(tmp_path: Path) -> None:
    url = await run_two_sagas(tmp_path)
    db = await open_database(url)
    orch = Orchestrator(db)
    app = saga_api(orch.log)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga") as client:
        compensated = (await client.get("/sagas", params={"state": "compensated"})).json()
        shown = (await client.get("/sagas/o-big")).json()
        missing = await client.get("/sagas/nope")
        bad_state = await client.get("/sagas", params={"state": "DONE"})
    assert [s["saga_id"] for s in compensated["sagas"]] == ["o-big"]
    assert shown["failed_step"] == "reserve_inventory"
    assert "OutOfStockError" in shown["error"]
    assert [e["kind"] for e in shown["timeline"]][-3:] == [
        "compensation_started",
        "compensation_completed",
        "compensated",
    ]
    assert missing.status_code == 404
    assert "no saga with id 'nope'" in missing.json()["error"]
    assert bad_state.status_code == 400
    await db.close()


def test_the_cli_lists_shows_and_draws_sagas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = asyncio.run(run_two_sagas(tmp_path))
    assert main(["saga", "--db", url, "list", "--state", "COMPLETED"]) == 0
    listing = capsys.readouterr().out
    assert "o-ok" in listing
    assert "o-big" not in listing

    assert main(["saga", "--db", url, "show", "o-big"]) == 0
    shown = capsys.readouterr().out
    assert "state:   COMPENSATED" in shown
    assert "step_failed" in shown
    assert "reserve_inventory" in shown

    assert main(["saga", "--db", url, "diagram", "order"]) == 0
    assert capsys.readouterr().out.startswith("flowchart TD")


def test_the_cli_reports_an_unknown_saga_id_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = asyncio.run(run_two_sagas(tmp_path))
    assert main(["saga", "--db", url, "show", "nope"]) == 1
    assert capsys.readouterr().out.startswith("error: no saga with id 'nope'")
    assert main(["saga", "--db", url, "diagram", "refund"]) == 1
    assert "no saga definition 'refund'" in capsys.readouterr().out


def test_the_mermaid_diagram_shows_forward_path_pivot_and_reverse_compensation() -> None:
    diagram = saga_diagram(order_saga(None))  # type: ignore[arg-type]
    lines = diagram.splitlines()
    assert lines[0] == "flowchart TD"
    assert "    start --> s0[create_order]" in lines
    assert "    s0 -->|ok| s1[reserve_inventory]" in lines
    assert "    s2 -->|ok| s3{{confirm_order}}" in lines
    assert "    s3 -->|ok| done([COMPLETED])" in lines
    # The pivot failing undoes charge, then reserve, then create, newest first.
    assert "    s3 -.->|fails| c2" in lines
    assert "    c2 --> c1" in lines
    assert "    c1 --> c0" in lines
    assert "    c0 --> compensated" in lines
    assert "    s0 -.->|fails| compensated" in lines
