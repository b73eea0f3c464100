"""The recommendations service: products of the same category. When it is down the
product page shows best sellers instead (the gateway's aggregation fallback)."""

from __future__ import annotations

from examples.shop import seed
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service


def popular_items() -> list[dict[str, object]]:
    """The best sellers in the shape of a recommendation (the fallback)."""
    items = [seed.product(product_id) for product_id in seed.POPULAR]
    return [{"id": p.id, "name": p.name} for p in items if p is not None]


def build(settings: ShopSettings) -> Service:
    """The recommendations service (stateless: it learns nothing, it only matches)."""
    runtime = ShopRuntime("recommendations", settings)

    async def recommend(request: Request) -> JSON:
        wanted = seed.product(request.path_params["product_id"])
        if wanted is None:
            return JSON({"items": popular_items(), "source": "popular"})
        items = [
            {"id": p.id, "name": p.name}
            for p in seed.PRODUCTS
            if p.category == wanted.category and p.id != wanted.id
        ]
        return JSON({"items": items[:4], "source": "live"})

    app = Starlette(
        routes=[Route("/recommendations/{product_id}", recommend, methods=["GET"])],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
