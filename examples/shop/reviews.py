"""The reviews service: recent reviews of a product. The product page degrades to
"temporarily unavailable" when it is down (the gateway's aggregation fallback)."""

from __future__ import annotations

from examples.shop import seed
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service
from shipyard.storage import Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reviews (product_id TEXT NOT NULL, author TEXT NOT NULL,"
    " stars INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (product_id, author))",
)


async def _seed(tx: Transaction) -> None:
    if await tx.fetchone("SELECT 1 FROM reviews LIMIT 1") is not None:
        return
    await tx.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?)", seed.REVIEWS)


def build(settings: ShopSettings) -> Service:
    """The reviews service."""
    runtime = ShopRuntime("reviews", settings, schema=SCHEMA, seed=_seed)

    async def recent(request: Request) -> JSON:
        try:
            limit = max(1, min(int(request.query_params.get("limit", "5")), 50))
        except ValueError:
            limit = 5
        async with runtime.db.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT author, stars, text FROM reviews WHERE product_id = ?"
                " ORDER BY author LIMIT ?",
                request.path_params["product_id"],
                limit,
            )
        items = [{"author": r[0], "stars": r[1], "text": r[2]} for r in rows]
        return JSON({"status": "ok", "items": items})

    app = Starlette(
        routes=[Route("/products/{product_id}/reviews", recent, methods=["GET"])],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
