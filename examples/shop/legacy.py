"""The legacy monolith: catalogue and account pages under ``/api/legacy/...``, from one
shared database — what the gateway strangles route by route (the catalogue page has moved
to the products service; account pages still live here)."""

from __future__ import annotations

from examples.shop import seed
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service
from shipyard.storage import Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS catalog (sku TEXT PRIMARY KEY, title TEXT NOT NULL,"
    " price_cents BIGINT NOT NULL, category TEXT NOT NULL, description TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " email TEXT NOT NULL)",
)


async def _seed(tx: Transaction) -> None:
    if await tx.fetchone("SELECT 1 FROM catalog LIMIT 1") is not None:
        return
    for item in seed.PRODUCTS:
        await tx.execute(
            "INSERT INTO catalog VALUES (?, ?, ?, ?, ?)",
            item.id,
            item.name,
            item.price_cents,
            item.category,
            item.description,
        )
    for customer in seed.CUSTOMERS:
        await tx.execute(
            "INSERT INTO accounts VALUES (?, ?, ?)", customer.id, customer.name, customer.email
        )


def build(settings: ShopSettings) -> Service:
    """The legacy monolith."""
    runtime = ShopRuntime("legacy", settings, schema=SCHEMA, seed=_seed)

    async def catalog_page(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT sku, title, price_cents, category, description FROM catalog WHERE sku = ?",
                request.path_params["product_id"],
            )
        if row is None:
            return error(404, "unknown sku")
        return JSON(seed.legacy_catalog_entry(seed.Product(row[0], row[1], row[2], row[3], row[4])))

    async def account_page(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT id, name, email FROM accounts WHERE id = ?",
                request.path_params["user_id"],
            )
        if row is None:
            return error(404, "unknown account")
        return JSON({"account": row[0], "holder": row[1], "email": row[2], "legacy": True})

    app = Starlette(
        routes=[
            Route("/api/legacy/catalog/{product_id}", catalog_page, methods=["GET"]),
            Route("/api/legacy/account/{user_id}", account_page, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
