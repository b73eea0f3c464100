"""``shipyard registry``: run the embedded service registry (Consul's HTTP API)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from shipyard.core import configure_logging, get_logger


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``registry`` sub-command."""
    parser = subparsers.add_parser(
        "registry", help="run the embedded service registry (speaks Consul's HTTP API)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8500, help="port to listen on (0: any free)")
    parser.add_argument(
        "--data",
        default="var/registry.db",
        help="SQLite snapshot file, so registrations survive a restart ('' keeps none)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    configure_logging()
    asyncio.run(_serve(args.host, args.port, args.data or None))
    return 0


async def _serve(host: str, port: int, data_path: str | None) -> None:
    from shipyard.discovery.registry import RegistryServer

    log = get_logger("shipyard.cli.registry")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with RegistryServer(host, port, data_path=data_path) as server:
        log.info("registry ready", url=server.url, data=data_path)
        await stop.wait()
        log.info("registry shutting down")
