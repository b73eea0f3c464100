"""``shipyard up``: run the reference shop (``examples/shop``) on one machine.

Starts the embedded service registry, every shop service (one process each, several
inventory instances), the gateway with its web and mobile frontends; the services seed
their demo data on first start. Serves the live dashboard and the supervisor's control API
(list, kill, restart instances). Prints the URLs, a demo JWT and one ready line, then runs
until Ctrl-C / SIGTERM and stops everything cleanly (no orphan processes).

``--profile distributed`` runs the same system on PostgreSQL (a database per service),
NATS JetStream and Redis on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from shipyard.core import configure_logging, get_logger


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``up`` sub-command."""
    parser = subparsers.add_parser("up", help="run the reference shop on one machine")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--registry-port", type=int, default=8500, help="registry port")
    parser.add_argument("--var", default="var", help="folder for the embedded databases")
    parser.add_argument(
        "--gateway-port", type=int, default=8080, help="gateway port (0: a free port)"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=8600,
        help="first service port, counting up (0: free ports)",
    )
    parser.add_argument(
        "--profile",
        choices=("embedded", "distributed"),
        default="embedded",
        help="embedded: SQLite + SQLite event log; distributed: PostgreSQL, NATS, Redis",
    )
    parser.add_argument(
        "--flow",
        choices=("orchestrated", "choreographed"),
        default="orchestrated",
        help="how orders are placed unless a request says otherwise",
    )
    parser.add_argument(
        "--inventory-instances", type=int, default=2, help="inventory processes (default 2)"
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=8900, help="live dashboard port (0: a free port)"
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=8499,
        help="supervisor control API: list, kill, restart instances (0: a free port)",
    )
    parser.set_defaults(run=run)


def shop_root() -> Path | None:
    """The checkout holding ``examples/shop`` (``None`` when shipyard is installed without it)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "examples" / "shop" / "__init__.py").exists() else None


class _ControlServer(uvicorn.Server):
    """uvicorn for the control API, leaving SIGINT/SIGTERM to ``up``'s own handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(args: argparse.Namespace) -> int:
    """Start the shop and block until interrupted; 2 when it cannot start."""
    # Warnings only: the terminal shows the URLs; each service logs to var/logs/<id>.log.
    configure_logging(json=False, level="WARNING")
    root = shop_root()
    if root is None:
        print(
            "shipyard up: examples/shop not found; run it from a Shipyard checkout", file=sys.stderr
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    var = Path(args.var)
    var.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_up(args, var))
    except KeyboardInterrupt:
        return 0


async def _up(args: argparse.Namespace, var: Path) -> int:
    from examples.shop.auth import mint_token
    from examples.shop.control import SupervisorControl, control_app
    from examples.shop.distributed import distributed_settings, prepare_distributed
    from examples.shop.supervisor import Supervisor, SupervisorError, free_port, memory_in_use

    from shipyard.dashboard import Dashboard

    log = get_logger("shipyard.up")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registry = f"consul://{args.host}:{args.registry_port}"
    settings = None
    if args.profile == "distributed":
        settings = distributed_settings(var, registry, flow=args.flow)
        try:
            await prepare_distributed(settings)
        except Exception as exc:
            print(f"shipyard up: the distributed profile cannot start: {exc}", file=sys.stderr)
            return 2
    supervisor = Supervisor(
        var,
        host=args.host,
        registry_port=args.registry_port,
        gateway_port=args.gateway_port,
        base_port=args.base_port or None,
        instances={"inventory": args.inventory_instances},
        flow=args.flow,
        settings=settings,
    )
    starting = loop.create_task(supervisor.start())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await supervisor.stop()
        return 0
    stopped.cancel()
    try:
        starting.result()
    except SupervisorError as exc:
        print(f"shipyard up: {exc}", file=sys.stderr)
        return 1
    assert supervisor.registry is not None
    control_port = args.control_port or free_port(args.host)
    control = _ControlServer(
        uvicorn.Config(
            control_app(supervisor, supervisor.settings.chaos_token),
            host=args.host,
            port=control_port,
            log_level="warning",
            lifespan="off",
        )
    )
    dashboard_port = args.dashboard_port or free_port(args.host)
    dashboard = Dashboard(
        registry_url=supervisor.settings.registry,
        saga_api_url=supervisor.url("orders"),
        chaos_token=supervisor.settings.chaos_token,
        control=SupervisorControl(supervisor),
    )
    board = _ControlServer(
        uvicorn.Config(dashboard.app, host=args.host, port=dashboard_port, log_level="warning")
    )
    serving = [loop.create_task(control.serve()), loop.create_task(board.serve())]
    # The ready line promises every URL answers: wait for both listeners.
    while not (control.started and board.started):
        if any(task.done() for task in serving):
            print("shipyard up: the control or dashboard port is taken", file=sys.stderr)
            control.should_exit = board.should_exit = True
            await asyncio.gather(*serving, return_exceptions=True)
            await supervisor.stop()
            return 1
        await asyncio.sleep(0.01)
    gateway = supervisor.gateway_url
    print(
        f"dashboard http://{args.host}:{dashboard_port}/"
        f"   (chaos token {supervisor.settings.chaos_token})"
    )
    print(f"registry  {supervisor.registry.url}/v1/catalog/services  (Consul HTTP API)")
    print(f"web       {gateway}/web/api/product/p-001   (BFF: product page, JWT)")
    print(f"mobile    {gateway}/mobile/api/product/p-001")
    print(f"orders    POST {gateway}/web/api/orders   (Idempotency-Key, JWT)")
    print(f"legacy    {gateway}/api/legacy/catalog/p-001   (strangled: shadowed to products)")
    print(f"admin     {supervisor.gateway_admin_url}/strangler   (Bearer {supervisor.admin_token})")
    for instance in supervisor.instances():
        if instance.service != "gateway":
            print(f"  {instance.id:<20} {instance.url}   (/metrics, /health/*)")
    print(f"sagas     {supervisor.url('orders')}/sagas")
    print(
        f"control   http://{args.host}:{control_port}/instances"
        f"   (Bearer {supervisor.settings.chaos_token}; POST /instances/<id>/kill|restart)"
    )
    print(f"token     {mint_token(supervisor.settings.jwt_secret, 'u-1')}")
    print(
        f"shipyard up: ready in {supervisor.ready_in or 0:.1f} s, "
        f"{len(supervisor.instances())} processes, {memory_in_use(supervisor) // 2**20} MiB"
        " (Ctrl-C stops)",
        flush=True,
    )
    await stop.wait()
    log.info("stopping")
    control.should_exit = board.should_exit = True
    await asyncio.gather(*serving)
    await supervisor.stop()
    return 0
