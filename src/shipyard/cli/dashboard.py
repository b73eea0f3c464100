"""``shipyard dashboard``: serve the live dashboard of a running system.

The chaos token comes from the environment (``SHIPYARD_CHAOS_TOKEN``), not the command
line, so it does not show in ``ps``. The dashboard binds to 127.0.0.1 unless told
otherwise: its controls inject faults, so it is a local operator's tool. Kill and
restart need a process supervisor (``shipyard up`` mounts the dashboard with its own);
served by this command, the dashboard shows and injects faults but kills nothing.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from shipyard.core import ConfigError, configure_logging

TOKEN_ENV = "SHIPYARD_CHAOS_TOKEN"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``dashboard`` sub-command."""
    parser = subparsers.add_parser(
        "dashboard", help="serve the live dashboard (services, breakers, sagas, chaos)"
    )
    parser.add_argument(
        "--registry", default="consul://127.0.0.1:8500", help="registry URL (Consul HTTP API)"
    )
    parser.add_argument("--sagas", default=None, help="base URL of a saga query API")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8900, help="port to listen on")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (default 1)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    import uvicorn

    from shipyard.dashboard import Dashboard

    try:
        dashboard = Dashboard(
            registry_url=args.registry,
            saga_api_url=args.sagas,
            chaos_token=os.environ.get(TOKEN_ENV) or None,
            interval=args.interval,
        )
    except ConfigError as exc:
        print(f"shipyard dashboard: {exc}")
        return 2
    configure_logging()
    print(f"dashboard: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(dashboard.app, host=args.host, port=args.port, log_level="warning")
    return 0
