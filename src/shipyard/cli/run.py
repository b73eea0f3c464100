"""``shipyard run module:service``: serve one ``Service`` with uvicorn (uvloop + httptools).

SIGTERM drains: readiness fails at once, the server stops accepting after
``--drain-delay`` seconds, in-flight requests finish, the service deregisters and closes
its resources, and the process exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shipyard.core import ConfigError, configure_logging


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``run`` sub-command."""
    parser = subparsers.add_parser("run", help="serve a shipyard Service (module:attribute)")
    parser.add_argument("target", help="the Service to run, as module:attribute")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: the service's own, else 8000)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds to keep accepting after SIGTERM while readiness fails (default 0)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 2 for a bad target or option."""
    from shipyard.service import load_service
    from shipyard.service import run as serve

    configure_logging()
    try:
        target = args.target if args.workers > 1 else load_service(args.target)
        serve(
            target,
            host=args.host,
            port=args.port,
            workers=args.workers,
            drain_delay=args.drain_delay,
        )
    except ConfigError as exc:
        print(f"shipyard run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # uvicorn re-raises SIGINT after its graceful stop; the shutdown already happened.
        pass
    return 0
