"""Dead letters can be listed, inspected and replayed — from code and from the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.cli import main
from shipyard.core import ManualClock
from shipyard.messaging import (
    DeadLetterNotFoundError,
    DeadLetterStore,
    Delivery,
    EventBus,
    MemoryTransport,
    install_schema,
    open_transport,
)
from shipyard.storage import Transaction, open_database
from tests.messaging.conftest import OrderCreated, eventually, make_registry


async def _dead_letter_one_event(tmp_path: Path) -> str:
    """Run a bus whose billing handler always fails; returns the poisoned event's id."""
    transport = await open_transport(f"sqlite:///{tmp_path / 'bus.db'}")
    db = await open_database(f"sqlite:///{tmp_path / 'billing.db'}")
    bus = EventBus(transport, db, make_registry(), max_attempts=2, clock=ManualClock())

    @bus.subscribe(OrderCreated, group="billing")
    async def charge(event: OrderCreated, tx: Transaction) -> None:
        raise LookupError(f"no customer for {event.order_id}")

    @bus.subscribe(OrderCreated, group="shipping")
    async def ship(event: OrderCreated, tx: Transaction) -> None:
        pass

    event = OrderCreated(order_id="o-7")
    async with bus:
        await bus.publish(event)
        await eventually(lambda: bus.dead_lettered == 1 and bus.handled == 1)
    await db.close()
    await transport.close()
    return event.id


async def _handle_replays(tmp_path: Path) -> list[tuple[str, str]]:
    """Run the bus again with working handlers; returns (group, order id) handled."""
    transport = await open_transport(f"sqlite:///{tmp_path / 'bus.db'}")
    db = await open_database(f"sqlite:///{tmp_path / 'billing.db'}")
    bus = EventBus(transport, db, make_registry(), clock=ManualClock())
    handled: list[tuple[str, str]] = []
    for group in ("billing", "shipping"):

        async def handle(event: OrderCreated, tx: Transaction, group: str = group) -> None:
            handled.append((group, event.order_id))

        bus.subscribe(OrderCreated, group=group, handler=handle)
    async with bus:
        await eventually(lambda: bool(handled))
        await asyncio.sleep(0.05)  # room for a wrong second delivery to show up
    await db.close()
    await transport.close()
    return handled


async def test_a_replayed_dead_letter_is_handled_again_by_its_group_only(tmp_path: Path) -> None:
    event_id = await _dead_letter_one_event(tmp_path)
    db = await open_database(f"sqlite:///{tmp_path / 'billing.db'}")
    store = DeadLetterStore(db)
    [letter] = await store.list()
    assert (letter.event_id, letter.group, letter.attempts) == (event_id, "billing", 2)
    assert "no customer for o-7" in letter.error
    transport = await open_transport(f"sqlite:///{tmp_path / 'bus.db'}")
    await store.replay(letter.id, transport)
    await transport.close()
    assert await store.list() == []
    assert (await store.get(letter.id)).replayed_at is not None
    await db.close()
    assert await _handle_replays(tmp_path) == [("billing", "o-7")]


async def test_an_unknown_dead_letter_id_says_how_to_find_the_right_one(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'x.db'}")
    await install_schema(db)
    with pytest.raises(DeadLetterNotFoundError, match="dlq list"):
        await DeadLetterStore(db).get(99)
    await db.close()


def test_the_cli_lists_shows_and_replays_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = asyncio.run(_dead_letter_one_event(tmp_path))
    db_url = f"sqlite:///{tmp_path / 'billing.db'}"
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"

    assert main(["events", "dlq", "--db", db_url, "list"]) == 0
    listing = capsys.readouterr().out
    assert "billing" in listing
    assert "OrderCreated" in listing
    assert "attempts=2" in listing

    assert main(["events", "dlq", "--db", db_url, "show", "1"]) == 0
    shown = capsys.readouterr().out
    assert event_id in shown
    assert "no customer for o-7" in shown

    assert main(["events", "dlq", "--db", db_url, "replay", "1", "--transport", bus_url]) == 0
    assert "replayed dead letter 1" in capsys.readouterr().out
    assert main(["events", "dlq", "--db", db_url, "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert asyncio.run(_handle_replays(tmp_path)) == [("billing", "o-7")]

    assert main(["events", "dlq", "--db", db_url, "show", "42"]) == 1
    assert "no dead letter with id 42" in capsys.readouterr().out


async def test_an_event_redelivered_too_often_is_dead_lettered_without_running_again(
    tmp_path: Path,
) -> None:
    # What JetStream reports after a poison message crashed the consumer max_attempts times.
    db = await open_database(f"sqlite:///{tmp_path / 'c.db'}")
    registry = make_registry()
    bus = EventBus(MemoryTransport(), db, registry, max_attempts=3, clock=ManualClock())
    calls: list[str] = []

    @bus.subscribe(OrderCreated, group="billing")
    async def charge(event: OrderCreated, tx: Transaction) -> None:
        calls.append(event.order_id)

    await install_schema(db)
    crashing = registry.encode(OrderCreated(order_id="crasher"))
    healthy = registry.encode(OrderCreated(order_id="fine"))
    await bus.handle_batch("billing", [Delivery(crashing, 1, attempt=4), Delivery(healthy, 2)])
    assert calls == ["fine"]
    [letter] = await DeadLetterStore(db).list()
    assert letter.event_id == crashing.event_id
    assert "delivered 4 times" in letter.error
    await db.close()
