"""The SQLite event log's group lease: one subscription of a group consumes, the others
stand by and take over where it left off when it closes, dies or hangs (real processes
for the last two: SIGKILL and SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.messaging import SqliteTransport, WireMessage, open_transport
from shipyard.messaging.transport import Subscription

ROOT = Path(__file__).resolve().parents[2]


def message(n: int) -> WireMessage:
    return WireMessage("OrderCreated", f"e-{n}", None, b"{}")


async def open_log(path: Path, lease: float = 10.0) -> SqliteTransport:
    transport = await open_transport(f"sqlite:///{path}", group_lease=lease)
    assert isinstance(transport, SqliteTransport)
    return transport


async def ids(subscription: Subscription, wanted: int, within: float = 10.0) -> list[str]:
    """Fetch (without acking) until ``wanted`` events came or ``within`` ran out."""
    got: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < wanted and loop.time() < deadline:
        got += [d.message.event_id for d in await subscription.fetch(wanted - len(got), 0.1)]
    return got


async def test_a_standby_gets_nothing_then_continues_where_the_owner_acknowledged(
    tmp_path: Path,
) -> None:
    one, two = await open_log(tmp_path / "bus.db"), await open_log(tmp_path / "bus.db")
    try:
        await one.publish([message(n) for n in range(5)])
        owner = await one.subscribe("inventory")
        standby = await two.subscribe("inventory")
        assert (owner.consuming, standby.consuming) == (True, False)

        first = await owner.fetch(5, 1.0)
        assert [d.message.event_id for d in first] == [f"e-{n}" for n in range(5)]
        await owner.ack(first[:3])  # e-3 and e-4 handled but not acknowledged
        assert await standby.fetch(5, 0.3) == []

        await owner.close()  # hands the lease back
        await one.publish([message(5)])
        assert await ids(standby, 3) == ["e-3", "e-4", "e-5"]
        assert standby.consuming
        await standby.close()
    finally:
        await one.close()
        await two.close()


async def test_a_new_subscription_after_a_clean_close_consumes_at_once(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "bus.db", lease=60.0)
    try:
        first = await log.subscribe("g")
        await first.close()
        second = await log.subscribe("g")
        assert second.consuming  # not after the 60 s lease
        await second.close()
    finally:
        await log.close()


async def next_state(process: asyncio.subprocess.Process) -> str:
    """The holder's next CONSUMING / STANDBY line (its log lines are skipped)."""
    assert process.stdout is not None
    while line := await process.stdout.readline():
        if line.strip() in (b"CONSUMING", b"STANDBY"):
            return line.strip().decode()
    raise AssertionError("the lease holder exited")


@contextlib.asynccontextmanager
async def holder(bus: Path, group: str, lease: float) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process holding ``group``'s lease (it printed CONSUMING)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.messaging.lease_holder",
        f"sqlite:///{bus}",
        group,
        str(lease),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert await asyncio.wait_for(next_state(process), 30) == "CONSUMING"
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.wait()


async def test_a_killed_owners_group_is_taken_over_without_waiting_for_its_lease(
    tmp_path: Path,
) -> None:
    bus = tmp_path / "bus.db"
    log = await open_log(bus, lease=300.0)
    try:
        await log.publish([message(n) for n in range(3)])
        async with holder(bus, "payments", lease=300.0) as process:
            standby = await log.subscribe("payments")
            assert not standby.consuming
            process.kill()  # SIGKILL: no chance to hand the lease back
            await process.wait()
            # The lease has 300 s left, but its process is gone.
            assert await ids(standby, 3, within=10.0) == ["e-0", "e-1", "e-2"]
            await standby.close()
    finally:
        await log.close()


async def test_a_hung_owner_loses_the_group_when_its_lease_runs_out_and_learns_it(
    tmp_path: Path,
) -> None:
    bus = tmp_path / "bus.db"
    log = await open_log(bus, lease=1.0)
    try:
        await log.publish([message(0)])
        async with holder(bus, "orders", lease=1.0) as process:
            standby = await log.subscribe("orders")
            assert not standby.consuming
            os.kill(process.pid, signal.SIGSTOP)  # alive, but renewing nothing
            assert await ids(standby, 1, within=15.0) == ["e-0"]
            assert standby.consuming
            os.kill(process.pid, signal.SIGCONT)
            # Its next renewal finds the lease taken: it stands by, never consumes twice.
            assert await asyncio.wait_for(next_state(process), 15) == "STANDBY"
            await standby.close()
    finally:
        await log.close()


async def test_a_log_made_before_leases_existed_gains_them(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE shipyard_bus_groups (group_name TEXT PRIMARY KEY,"
            " position INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO shipyard_bus_groups VALUES ('g', 0)")
        conn.commit()
    log = await open_log(path)
    try:
        await log.publish([message(0)])
        subscription = await log.subscribe("g")
        assert subscription.consuming
        assert await ids(subscription, 1) == ["e-0"]
        await subscription.close()
    finally:
        await log.close()


@pytest.mark.parametrize("lease", [0, -1])
async def test_a_lease_that_is_not_positive_is_refused_naming_it(
    tmp_path: Path, lease: float
) -> None:
    from shipyard.core import ConfigError

    with pytest.raises(ConfigError, match="group_lease"):
        await open_log(tmp_path / "bus.db", lease=lease)
