"""``shipyard gateway --config gateway.yaml``: run the API gateway.

``--workers N`` starts N processes that share each listening port through SO_REUSEPORT,
so the kernel spreads connections across them (one event loop per core). SIGHUP reloads
the configuration file without dropping requests (forwarded to every worker); a file
that does not validate is logged and the running configuration kept.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import signal
import subprocess
import sys
from typing import Any

from shipyard.core.errors import ConfigError
from shipyard.core.logging import configure_logging


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``gateway`` sub-command."""
    parser = subparsers.add_parser("gateway", help="run the API gateway from a YAML file")
    parser.add_argument("--config", required=True, help="gateway YAML file")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the ports (default 1)"
    )
    parser.add_argument(
        "--discovery",
        default=None,
        help="registry URL for services without static urls (e.g. consul://127.0.0.1:8500)",
    )
    parser.set_defaults(run=run)


def _spawn_workers(args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-c",
        "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
        "gateway",
        "--config",
        args.config,
        "--workers",
        "1",
    ]
    if args.discovery:
        command += ["--discovery", args.discovery]
    return [subprocess.Popen(command) for _ in range(args.workers - 1)]


async def _serve(
    args: argparse.Namespace, children: list[subprocess.Popen[bytes]] | None = None
) -> None:
    from shipyard.gateway import Gateway, load_config

    config = load_config(args.config)
    resolver = None
    if args.discovery:
        # Imported by name: discovery is optional for a gateway with static upstreams.
        discovery = importlib.import_module("shipyard.discovery")
        resolver = discovery.Discovery(args.discovery)
    gateway = Gateway(config, resolver=resolver, config_path=args.config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def reload_when_started() -> None:
        await started.wait()
        await gateway.reload_from_file()

    def reload() -> None:
        for child in children or ():
            child.send_signal(signal.SIGHUP)
        task = loop.create_task(reload_when_started())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Installed before listening: a SIGHUP during start-up is a reload, not process death.
    loop.add_signal_handler(signal.SIGHUP, reload)
    await gateway.start()
    started.set()
    # Everything built so far lives as long as the process: keep it out of the cyclic GC's
    # generations, and collect less often, so a full collection does not stall a burst
    # of requests (it shows up directly in p99 latency).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        await stop.wait()
    finally:
        await gateway.close()


def run(args: argparse.Namespace) -> int:
    """Validate the config, start the workers, serve until SIGTERM/SIGINT."""
    if args.workers < 1:
        print("shipyard gateway: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        from shipyard.gateway import load_config

        load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"shipyard gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    children = _spawn_workers(args) if args.workers > 1 else []
    try:
        import uvloop

        uvloop.run(_serve(args, children))
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()
    return 0
