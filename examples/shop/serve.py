"""One shop service process: ``python -m examples.shop.serve inventory --port 8611``.

Settings come from the ``SHOP_*`` environment the supervisor sets (see
:class:`~examples.shop.settings.ShopSettings`); the service is served by
``shipyard.service.run`` (uvicorn; SIGTERM drains, deregisters and exits 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from examples.shop.settings import ShopSettings

from shipyard.core import ConfigError, configure_logging
from shipyard.service import Service, run

SERVICES: dict[str, str] = {
    "payment-provider": "examples.shop.provider",
    "users": "examples.shop.users",
    "products": "examples.shop.products",
    "inventory": "examples.shop.inventory",
    "payments": "examples.shop.payments",
    "reviews": "examples.shop.reviews",
    "recommendations": "examples.shop.recommendations",
    "legacy": "examples.shop.legacy",
    "orders": "examples.shop.orders",
}
"""Every service of the shop and the module whose ``build(settings)`` makes it."""


def build_service(name: str, settings: ShopSettings) -> Service:
    """The ``Service`` called ``name``, built from ``settings``."""
    try:
        module = importlib.import_module(SERVICES[name])
    except KeyError:
        raise ConfigError("service", name, f"must be one of {', '.join(SERVICES)}") from None
    build: Callable[[ShopSettings], Service] = module.build
    return build(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one service until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m examples.shop.serve")
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        service = build_service(args.service, ShopSettings.from_environment())
        run(service, host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"{args.service}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
