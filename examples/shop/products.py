"""The products service: the catalogue, best sellers, and the catalogue page moved out of
the legacy monolith (``/api/legacy/catalog/...``, answered in the monolith's shape)."""

from __future__ import annotations

from examples.shop import seed
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service
from shipyard.storage import Row, Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS products (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " price_cents BIGINT NOT NULL, category TEXT NOT NULL, description TEXT NOT NULL,"
    " thumbnail TEXT NOT NULL, popularity INTEGER NOT NULL DEFAULT 0)",
)
_COLUMNS = "id, name, price_cents, category, description, thumbnail"


async def _seed(tx: Transaction) -> None:
    if await tx.fetchone("SELECT 1 FROM products LIMIT 1") is not None:
        return
    for item in seed.PRODUCTS:
        rank = len(seed.POPULAR) - seed.POPULAR.index(item.id) if item.id in seed.POPULAR else 0
        await tx.execute(
            f"INSERT INTO products ({_COLUMNS}, popularity) VALUES (?, ?, ?, ?, ?, ?, ?)",
            item.id,
            item.name,
            item.price_cents,
            item.category,
            item.description,
            item.thumbnail,
            rank,
        )


def _product(row: Row) -> dict[str, object]:
    return {
        "id": row[0],
        "name": row[1],
        "price_cents": row[2],
        "category": row[3],
        "description": row[4],
        "thumbnail": row[5],
    }


def build(settings: ShopSettings) -> Service:
    """The products service."""
    runtime = ShopRuntime("products", settings, schema=SCHEMA, seed=_seed)

    async def fetch(sql: str, *params: object) -> list[Row]:
        async with runtime.db.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *params)

    async def listing(request: Request) -> JSON:
        ids = request.query_params.get("ids")
        if ids:
            wanted = [i for i in ids.split(",") if i][:100]
            marks = ",".join("?" * len(wanted))
            rows = await fetch(
                f"SELECT {_COLUMNS} FROM products WHERE id IN ({marks}) ORDER BY id", *wanted
            )
        else:
            rows = await fetch(f"SELECT {_COLUMNS} FROM products ORDER BY id")
        return JSON({"products": [_product(row) for row in rows]})

    async def one(request: Request) -> JSON:
        rows = await fetch(
            f"SELECT {_COLUMNS} FROM products WHERE id = ?", request.path_params["product_id"]
        )
        if not rows:
            return error(404, "no such product")
        return JSON(_product(rows[0]))

    async def popular(request: Request) -> JSON:
        rows = await fetch(
            f"SELECT {_COLUMNS} FROM products WHERE popularity > 0"
            " ORDER BY popularity DESC, id LIMIT 4"
        )
        return JSON({"items": [_product(row) for row in rows], "source": "popular"})

    async def legacy_catalog(request: Request) -> JSON:
        rows = await fetch(
            f"SELECT {_COLUMNS} FROM products WHERE id = ?", request.path_params["product_id"]
        )
        if not rows:
            return error(404, "unknown sku")
        row = rows[0]
        item = seed.Product(row[0], row[1], row[2], row[3], row[4])
        return JSON(seed.legacy_catalog_entry(item))

    app = Starlette(
        routes=[
            Route("/products", listing, methods=["GET"]),
            Route("/products/{product_id}", one, methods=["GET"]),
            Route("/popular", popular, methods=["GET"]),
            Route("/api/legacy/catalog/{product_id}", legacy_catalog, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
