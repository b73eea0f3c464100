"""CQRS: commands through middleware to handlers, queries answered from read models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from shipyard.core import ManualClock
from shipyard.cqrs import (
    Authorize,
    Command,
    CommandBus,
    CommandContext,
    CommandRejectedError,
    CommandValidationError,
    Idempotent,
    LogCommands,
    NoHandlerError,
    NotAuthorizedError,
    Query,
    QueryBus,
    Transactional,
    install_schema,
)
from shipyard.eventsourcing import ProjectionRunner, Repository, open_event_store
from shipyard.messaging import Event, EventRegistry, Outbox
from shipyard.messaging import install_schema as install_messaging
from shipyard.storage import Database, Transaction, open_database
from tests.conftest import scratch_postgres
from tests.eventsourcing.read_models import CustomerOrderHistory
from tests.eventsourcing.shop import Order, shop_registry


class PlaceOrder(Command):
    order_id: str
    customer: str
    total_cents: Annotated[int, msgspec.Meta(gt=0)]


class OrdersOfCustomer(Query):
    customer: str


class OrderAccepted(Event):
    order_id: str
    customer: str


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
        yield await _prepared(database)
        await database.close()
        return
    async with scratch_postgres() as url:
        database = await open_database(url)
        yield await _prepared(database)
        await database.close()


async def _prepared(database: Database) -> Database:
    await install_schema(database)
    await install_messaging(database)
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, total BIGINT)")
        await tx.execute(
            "CREATE TABLE customer_summaries"
            " (customer TEXT PRIMARY KEY, orders BIGINT, spent BIGINT)"
        )
    return database


def conventional_service(db: Database, **allow: Any) -> tuple[CommandBus, QueryBus, list[str]]:
    """CQRS without event sourcing: ordinary tables, an outbox, a denormalised read table."""
    registry = EventRegistry()
    registry.register(OrderAccepted)
    outbox = Outbox(registry, clock=ManualClock())
    trail: list[str] = []

    async def record(command: Any, context: CommandContext, next: Any) -> Any:
        trail.append(f"before {command.command_name}")
        result = await next(command, context)
        trail.append("after")
        return result

    def may_place(command: Any, context: CommandContext) -> bool:
        return context.principal != "guest"

    commands = CommandBus(
        middleware=[
            LogCommands(clock=ManualClock()),
            record,
            Authorize(may_place),
            Transactional(db),
            Idempotent(),
        ]
    )
    queries = QueryBus(db)

    @commands.register(PlaceOrder)
    async def place(command: PlaceOrder, context: CommandContext) -> dict[str, Any]:
        tx = context.tx
        assert tx is not None
        if await tx.fetchone("SELECT 1 FROM orders WHERE id = ?", command.order_id):
            raise CommandRejectedError(f"order {command.order_id} exists; use a new order id")
        trail.append("handled")
        await tx.execute(
            "INSERT INTO orders VALUES (?, ?, ?)",
            command.order_id,
            command.customer,
            command.total_cents,
        )
        await tx.execute(
            "INSERT INTO customer_summaries VALUES (?, 1, ?) ON CONFLICT (customer) DO UPDATE SET"
            " orders = customer_summaries.orders + 1,"
            " spent = customer_summaries.spent + excluded.spent",
            command.customer,
            command.total_cents,
        )
        await outbox.add(tx, OrderAccepted(order_id=command.order_id, customer=command.customer))
        return {"order_id": command.order_id}

    @queries.register(OrdersOfCustomer)
    async def summary(query: OrdersOfCustomer, tx: Transaction) -> tuple[int, int] | None:
        row = await tx.fetchone(
            "SELECT orders, spent FROM customer_summaries WHERE customer = ?", query.customer
        )
        return None if row is None else (row[0], row[1])

    return commands, queries, trail


async def test_a_command_writes_its_table_and_outbox_and_a_query_reads_the_summary(
    db: Database,
) -> None:
    commands, queries, trail = conventional_service(db)

    assert await commands.dispatch(PlaceOrder(order_id="1", customer="ada", total_cents=500)) == {
        "order_id": "1"
    }
    await commands.dispatch(PlaceOrder(order_id="2", customer="ada", total_cents=250))

    assert await queries.ask(OrdersOfCustomer(customer="ada")) == (2, 750)
    assert await queries.ask(OrdersOfCustomer(customer="bob")) is None
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT name FROM shipyard_outbox") == [
            ("OrderAccepted",),
            ("OrderAccepted",),
        ]
    assert trail[:3] == ["before PlaceOrder", "handled", "after"]


async def test_a_resent_command_id_runs_once_and_returns_the_first_result(db: Database) -> None:
    commands, queries, trail = conventional_service(db)
    command = PlaceOrder(order_id="1", customer="ada", total_cents=500)

    first = await commands.dispatch(command)
    again = await commands.dispatch(command)

    assert first == again == {"order_id": "1"}
    assert trail.count("handled") == 1
    assert await queries.ask(OrdersOfCustomer(customer="ada")) == (1, 500)


async def test_a_rejected_command_rolls_back_everything(db: Database) -> None:
    commands, queries, _ = conventional_service(db)
    await commands.dispatch(PlaceOrder(order_id="1", customer="ada", total_cents=500))

    with pytest.raises(CommandRejectedError, match="order 1 exists"):
        await commands.dispatch(PlaceOrder(order_id="1", customer="bob", total_cents=1))

    assert await queries.ask(OrdersOfCustomer(customer="bob")) is None
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT count(*) FROM shipyard_outbox") == [(1,)]


async def test_an_unauthorized_principal_is_refused_before_the_handler(db: Database) -> None:
    commands, _, trail = conventional_service(db)

    with pytest.raises(NotAuthorizedError, match="guest"):
        await commands.dispatch(
            PlaceOrder(order_id="1", customer="ada", total_cents=5), principal="guest"
        )

    assert "handled" not in trail


async def test_an_invalid_command_is_refused_naming_the_field(db: Database) -> None:
    commands, _, trail = conventional_service(db)

    with pytest.raises(CommandValidationError) as caught:
        await commands.dispatch(PlaceOrder(order_id="1", customer="ada", total_cents=0))

    assert caught.value.field == "total_cents"
    assert trail == []


async def test_a_query_handler_cannot_write(db: Database) -> None:
    queries = QueryBus(db)

    @queries.register(OrdersOfCustomer)
    async def sneaky(query: OrdersOfCustomer, tx: Transaction) -> None:
        await tx.execute("INSERT INTO orders VALUES ('x', 'y', 1)")

    with pytest.raises(Exception, match=r"(?i)read.only|readonly|query_only|attempt to write"):
        await queries.ask(OrdersOfCustomer(customer="ada"))

    async with db.transaction() as tx:  # and the connection is writable again afterwards
        await tx.execute("INSERT INTO orders VALUES ('z', 'y', 1)")


async def test_unknown_commands_and_queries_are_reported() -> None:
    with pytest.raises(NoHandlerError, match="PlaceOrder"):
        await CommandBus().dispatch(PlaceOrder(order_id="1", customer="a", total_cents=1))


async def test_event_sourced_commands_feed_a_projection_that_queries_read(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'es.db'}")
    try:
        store = await open_event_store(db)
        orders = Repository(store, Order, registry=shop_registry())
        projections = ProjectionRunner(store, shop_registry(), [CustomerOrderHistory()])
        await projections.install()
        commands, queries = CommandBus(), QueryBus(db)

        @commands.register(PlaceOrder)
        async def place(command: PlaceOrder, context: CommandContext) -> int:
            order = Order(command.order_id)
            order.place(command.customer, command.total_cents)
            return await orders.save(order)

        @queries.register(OrdersOfCustomer)
        async def history(query: OrdersOfCustomer, tx: Transaction) -> list[tuple[str, str]]:
            return [
                (row[0], row[1])
                for row in await tx.fetch(
                    "SELECT order_id, status FROM customer_orders WHERE customer = ?"
                    " ORDER BY order_id",
                    query.customer,
                )
            ]

        await commands.dispatch(PlaceOrder(order_id="a", customer="ada", total_cents=5))
        await commands.dispatch(PlaceOrder(order_id="b", customer="ada", total_cents=7))
        await projections.catch_up()

        assert await queries.ask(OrdersOfCustomer(customer="ada")) == [
            ("a", "placed"),
            ("b", "placed"),
        ]
    finally:
        await db.close()
