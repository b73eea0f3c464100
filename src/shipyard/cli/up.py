"""``shipyard up``: run the reference system on embedded defaults.

The reference shop is not built yet, so ``up`` starts what exists today: the embedded
service registry (Consul's HTTP API) with its SQLite snapshot under ``var/``. It prints the
URLs and one ready line, then runs until Ctrl-C / SIGTERM and stops cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from shipyard.core import configure_logging, get_logger


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``up`` sub-command."""
    parser = subparsers.add_parser("up", help="run the reference system on embedded defaults")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--registry-port", type=int, default=8500, help="registry port")
    parser.add_argument("--var", default="var", help="folder for the embedded databases")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start what exists of the reference system and block until interrupted."""
    configure_logging(json=False)
    Path(args.var).mkdir(parents=True, exist_ok=True)
    asyncio.run(_up(args.host, args.registry_port, Path(args.var)))
    return 0


async def _up(host: str, registry_port: int, var: Path) -> None:
    from shipyard.discovery.registry import RegistryServer

    log = get_logger("shipyard.up")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with RegistryServer(host, registry_port, data_path=str(var / "registry.db")) as registry:
        print(f"registry  {registry.url}/v1/catalog/services  (Consul HTTP API)")
        print("shipyard up: ready (the reference shop is not built yet; Ctrl-C stops)", flush=True)
        await stop.wait()
        log.info("stopping")
