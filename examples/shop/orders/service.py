"""The orders service process: HTTP API, saga orchestrator, choreography handlers,
order dashboard projection, user cache, and the saga / flow query endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import msgspec
from examples.shop.contracts import (
    Line,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentCharged,
    PaymentFailed,
    StockRejected,
    StockReleased,
    StockReserved,
)
from examples.shop.orders.aggregate import Order
from examples.shop.orders.placement import (
    SAGA,
    OrderBook,
    PlaceOrder,
    choreography,
    place_order_saga,
)
from examples.shop.orders.read_model import (
    DashboardQuery,
    OrderDashboard,
    dashboard_rows,
    join_users,
    user_replica,
)
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import FLOWS, ShopSettings
from examples.shop.web import JSON, body, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.client import ClientError
from shipyard.core import ShipyardError
from shipyard.cqrs import QueryBus
from shipyard.eventsourcing import ProjectionRunner, Repository, open_event_store
from shipyard.messaging import EventBus, Outbox
from shipyard.saga import (
    ChoreographyTracker,
    FlowNotFound,
    Orchestrator,
    SagaDefinition,
    SagaNotFound,
    SagaState,
    saga_view,
    show_saga,
)
from shipyard.service import Service

FLOW_EVENTS = (
    OrderPlaced,
    StockReserved,
    StockRejected,
    PaymentCharged,
    PaymentFailed,
    StockReleased,
    OrderConfirmed,
    OrderCancelled,
)


class NewLine(msgspec.Struct):
    """One line of ``POST /orders``."""

    product_id: str
    quantity: int


class NewOrder(msgspec.Struct):
    """``POST /orders`` body; ``user_id`` defaults to the gateway's ``X-User-Id``."""

    lines: list[NewLine]
    user_id: str | None = None
    flow: str | None = None


class _Parts:
    """What start-up builds (the handlers close over it)."""

    book: OrderBook
    orchestrator: Orchestrator
    saga: SagaDefinition[PlaceOrder]
    runner: ProjectionRunner
    queries: QueryBus
    tracker: ChoreographyTracker | None = None
    recovery: asyncio.Task[Any] | None = None


def build(settings: ShopSettings) -> Service:
    """The orders service (one instance: it runs the saga orchestrator)."""
    runtime = ShopRuntime(
        "orders", settings, publishes=True, idempotency_required=["/orders"], analytics=True
    )
    parts = _Parts()

    @runtime.on_open
    async def start() -> None:
        store = await open_event_store(runtime.db)
        repository = Repository(store, Order, registry=runtime.registry, outbox=runtime.outbox)
        parts.book = OrderBook(repository)
        # Sagas run after the request that started them answered: background work, in
        # the background pool, like the projection runner; the dashboard's reports use
        # the analytics pool (see ShopRuntime).
        parts.orchestrator = Orchestrator(runtime.background_db, backoff_base=0.2, backoff_max=2.0)
        parts.saga = place_order_saga(
            parts.book, runtime.client("inventory"), runtime.client("payments")
        )
        parts.orchestrator.register(parts.saga)
        await parts.orchestrator.install()
        background_store = await open_event_store(runtime.background_db)
        parts.runner = ProjectionRunner(background_store, runtime.registry, [OrderDashboard()])
        await parts.runner.install()
        parts.runner.start()
        parts.queries = QueryBus(runtime.analytics_db)
        parts.queries.register(DashboardQuery, dashboard_rows)
        # Sagas interrupted by a crash resume where their last commit left them.
        parts.recovery = asyncio.get_running_loop().create_task(parts.orchestrator.recover())

    @runtime.on_close
    async def stop() -> None:
        if parts.recovery is not None:
            parts.recovery.cancel()
            with contextlib.suppress(BaseException):
                await parts.recovery
        await parts.orchestrator.close()
        await parts.runner.stop()

    @runtime.consume
    def consume(bus: EventBus, outbox: Outbox) -> None:
        choreography(bus, _LazyBook(parts))
        replica = user_replica(runtime.inbox_db)
        replica.subscribe(bus, group="orders-user-cache")
        tracker = ChoreographyTracker(
            runtime.inbox_db,
            flow="order",
            completes=[OrderConfirmed],
            fails=[StockRejected, PaymentFailed],
            compensated=[OrderCancelled],
        )
        tracker.attach(bus, FLOW_EVENTS)
        parts.tracker = tracker

        @runtime.before_consuming
        async def install() -> None:
            await replica.install()
            await tracker.install()

    async def place(request: Request) -> JSON:
        try:
            wanted = await body(request, NewOrder)
        except ValueError as exc:
            return error(422, str(exc))
        user_id = request.headers.get("x-user-id") or wanted.user_id
        if not user_id:
            return error(401, "no user: send a JWT through the gateway (or user_id)")
        flow = wanted.flow or settings.flow
        if flow not in FLOWS:
            return error(422, f"flow must be one of {', '.join(FLOWS)}")
        if not wanted.lines or any(line.quantity < 1 for line in wanted.lines):
            return error(422, "an order needs lines with quantity >= 1")
        ids = sorted({line.product_id for line in wanted.lines})
        try:
            catalogue = await runtime.client("products").get_json(
                "/products", params={"ids": ",".join(ids)}
            )
        except (ClientError, ShipyardError) as exc:
            return error(503, f"cannot price the order now ({exc}); retry with the same key")
        prices = {p["id"]: int(p["price_cents"]) for p in catalogue["products"]}
        unknown = [i for i in ids if i not in prices]
        if unknown:
            return error(422, f"unknown products: {', '.join(unknown)}")
        lines = [
            Line(line.product_id, line.quantity, prices[line.product_id]) for line in wanted.lines
        ]
        total = sum(line.quantity * line.unit_cents for line in lines)
        order_id = f"o-{uuid.uuid4().hex}"
        if flow == "orchestrated":
            data = PlaceOrder(order_id, user_id, lines, total, flow)
            await parts.orchestrator.start(parts.saga, data, saga_id=order_id)
        else:

            def place_it(order: Order) -> None:
                order.place(user_id, lines, total, flow)

            await parts.book.change(order_id, place_it)
        return JSON(
            {"order_id": order_id, "status": "PENDING", "flow": flow, "total_cents": total}, 202
        )

    async def one(request: Request) -> JSON:
        order_id = request.path_params["order_id"]
        order = await parts.book.get(order_id)
        if order is not None:
            return JSON(order.view())
        with contextlib.suppress(SagaNotFound):
            await parts.orchestrator.log.get(order_id)
            return JSON({"order_id": order_id, "status": "PENDING", "flow": "orchestrated"})
        return error(404, "no such order")

    async def dashboard(request: Request) -> JSON:
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return error(422, "limit must be an integer")
        rows = await parts.queries.ask(
            DashboardQuery(status=request.query_params.get("status"), limit=limit)
        )
        cache = runtime.inbox_db.pool("api") if runtime.consuming else None
        return JSON({"orders": await join_users(rows, cache)})

    async def sagas(request: Request) -> JSON:
        state = request.query_params.get("state")
        if state is not None and state.upper() not in SagaState.__members__:
            return error(422, f"state must be one of {', '.join(SagaState.__members__)}")
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 1000))
        except ValueError:
            return error(422, "limit must be an integer")
        records = await parts.orchestrator.log.list(
            state=None if state is None else SagaState(state.upper()), name=SAGA, limit=limit
        )
        return JSON({"sagas": [saga_view(r) for r in records]})

    async def saga(request: Request) -> JSON:
        try:
            return JSON(await show_saga(parts.orchestrator.log, request.path_params["saga_id"]))
        except SagaNotFound as exc:
            return error(404, str(exc))

    async def flow(request: Request) -> JSON:
        if parts.tracker is None:
            return error(404, "this instance tracks no flows")
        try:
            found = await parts.tracker.get(request.path_params["correlation_id"])
        except FlowNotFound as exc:
            return error(404, str(exc))
        return JSON(
            {
                "correlation_id": found.correlation_id,
                "state": found.state.value,
                "events": [
                    {"name": e.name, "event_id": e.event_id, "causation_id": e.causation_id}
                    for e in found.events
                ],
            }
        )

    app = Starlette(
        routes=[
            Route("/orders", place, methods=["POST"]),
            Route("/orders/{order_id}", one, methods=["GET"]),
            Route("/dashboard/orders", dashboard, methods=["GET"]),
            Route("/sagas", sagas, methods=["GET"]),
            Route("/sagas/{saga_id}", saga, methods=["GET"]),
            Route("/flows/{correlation_id}", flow, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)


class _LazyBook(OrderBook):
    """The order book as built at start-up (handlers are subscribed before it exists)."""

    def __init__(self, parts: _Parts) -> None:
        self._parts = parts

    async def get(self, order_id: str) -> Order | None:
        return await self._parts.book.get(order_id)

    async def change(self, order_id: str, command: Any) -> Order:
        return await self._parts.book.change(order_id, command)
