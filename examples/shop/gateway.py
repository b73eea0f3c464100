"""The gateway in front of the shop, with its backends-for-frontends, as YAML.

* ``web`` (``/web``): JWT auth, rate limit per user; the product page fans out to products,
  inventory, reviews and recommendations in parallel (reviews degrade to "temporarily
  unavailable", recommendations to best sellers); orders; a cached product list.
* ``mobile`` (``/mobile``): the same JWT; a compact product page (name, price, thumbnail,
  availability).
* ``site`` (everything else): the legacy monolith's pages under ``/api/legacy``. The
  catalogue page is being strangled: ``catalog_weight`` percent goes to the products
  service, and a ``shadow_share`` of the legacy traffic is copied to it and compared.

The file is rendered at start-up (ports are chosen then) into ``var/gateway.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from examples.shop.auth import KEY_ID
from examples.shop.recommendations import popular_items

UPSTREAMS: dict[str, dict[str, Any]] = {
    "products": {"timeout": 2.0, "retries": 1},
    "inventory": {"timeout": 2.0, "retries": 1},
    "reviews": {"timeout": 1.0},
    "recommendations": {"timeout": 1.0},
    "orders": {"timeout": 10.0},
    "legacy": {"timeout": 2.0, "retries": 1},
}


def gateway_config(
    *,
    host: str,
    port: int,
    admin_port: int,
    admin_token: str,
    jwt_secret: str,
    access_log: Path | None = None,
    catalog_weight: float = 0.0,
    shadow_share: float = 1.0,
    rate: float = 2_000.0,
    cache_store: str = "memory://",
    rate_limit_store: str = "memory://",
) -> dict[str, Any]:
    """The gateway configuration as a dict (``yaml.safe_dump`` it)."""
    jwt = {
        "keys": [{"kid": KEY_ID, "alg": "HS256", "secret": jwt_secret}],
        "claim_headers": {"sub": "X-User-Id"},
    }
    limit = {"rate": rate, "burst": int(rate * 2), "per": "consumer"}
    product_page = {
        "budget": 1.5,
        "backends": [
            {"name": "product", "service": "products", "path": "/products/{id}", "timeout": 1.0},
            {
                "name": "inventory",
                "service": "inventory",
                "path": "/stock/{id}",
                "timeout": 1.0,
                "fallback": {"value": {"status": "unknown"}},
            },
            {
                "name": "reviews",
                "service": "reviews",
                "path": "/products/{id}/reviews?limit=5",
                "timeout": 0.5,
                "fallback": {"value": {"status": "temporarily unavailable", "items": []}},
            },
            {
                "name": "recommendations",
                "service": "recommendations",
                "path": "/recommendations/{id}",
                "timeout": 0.5,
                "fallback": {"value": {"items": popular_items(), "source": "popular"}},
            },
        ],
    }
    compact_page = {
        "budget": 1.0,
        "backends": [
            {
                "name": "product",
                "service": "products",
                "path": "/products/{id}",
                "timeout": 0.8,
                "select": ["id", "name", "price_cents", "thumbnail"],
            },
            {
                "name": "stock",
                "service": "inventory",
                "path": "/stock/{id}",
                "timeout": 0.8,
                "select": ["in_stock"],
                "fallback": {"value": {}},
            },
        ],
    }
    config: dict[str, Any] = {
        "listen": f"{host}:{port}",
        "rate_limit_store": rate_limit_store,
        "cache": {"store": cache_store},
        "admin": {"listen": f"{host}:{admin_port}", "token": admin_token},
        "services": UPSTREAMS,
        "frontends": {
            "web": {
                "prefix": "/web",
                "jwt": jwt,
                "rate_limit": limit,
                "routes": [
                    {
                        "name": "product-page",
                        "template": "/api/product/{id}",
                        "methods": ["GET"],
                        "aggregate": product_page,
                    },
                    {
                        "name": "products",
                        "exact": "/api/products",
                        "methods": ["GET"],
                        "service": "products",
                        "rewrite": "/products",
                        "cache": {"ttl": 5, "authenticated": True},
                    },
                    {
                        "name": "place-order",
                        "exact": "/api/orders",
                        "methods": ["POST"],
                        "service": "orders",
                        "rewrite": "/orders",
                    },
                    {
                        "name": "order",
                        "template": "/api/orders/{id}",
                        "methods": ["GET"],
                        "service": "orders",
                        "rewrite": "/orders/{id}",
                    },
                ],
            },
            "mobile": {
                "prefix": "/mobile",
                "jwt": jwt,
                "rate_limit": limit,
                "routes": [
                    {
                        "name": "product-page",
                        "template": "/api/product/{id}",
                        "methods": ["GET"],
                        "aggregate": compact_page,
                    },
                ],
            },
            "site": {
                "routes": [
                    {
                        "name": "catalog",
                        "prefix": "/api/legacy/catalog",
                        "methods": ["GET"],
                        "strangler": {
                            "legacy": "legacy",
                            "new": "products",
                            "weight": catalog_weight,
                            "shadow": {"share": shadow_share},
                        },
                    },
                    {
                        "name": "account",
                        "prefix": "/api/legacy/account",
                        "methods": ["GET"],
                        "service": "legacy",
                    },
                ],
            },
        },
    }
    if access_log is not None:
        config["access_log"] = {"path": str(access_log)}
    return config


def write_gateway_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
