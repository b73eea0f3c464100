"""``shipyard projections status|rebuild NAME|resume NAME``: operate event-sourced read models.

Projections are code, so ``rebuild`` and ``resume`` load them from the service:
``--projections package.module:PROJECTIONS`` (a list of ``Projection`` instances) and
``--registry package.module:REGISTRY`` (the ``EventRegistry`` of their events).
``status`` reads only the database.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
from typing import Any

from shipyard.core import ShipyardError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``projections`` sub-command."""
    parser = subparsers.add_parser("projections", help="event-sourced read models")
    parser.add_argument(
        "--db",
        default=os.environ.get("SHIPYARD_DB", "sqlite:///shipyard.db"),
        help="the service's database URL (default: $SHIPYARD_DB or sqlite:///shipyard.db)",
    )
    actions = parser.add_subparsers(dest="projections_command", required=True)
    actions.add_parser("status", help="checkpoint, state, lag and failure of every projection")
    for action, text in (
        ("rebuild", "rebuild NAME into a fresh table while the old one serves, then swap"),
        ("resume", "clear NAME's failure so it retries the event that stopped it"),
    ):
        command = actions.add_parser(action, help=text)
        command.add_argument("name")
        command.add_argument(
            "--projections", required=True, help="module:attribute holding the projections"
        )
        command.add_argument(
            "--registry", required=True, help="module:attribute holding the EventRegistry"
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; errors print one line and exit with status 1."""
    try:
        return asyncio.run(_run(args))
    except ShipyardError as error:
        print(f"error: {error}")
        return 1


def _load(spec: str, what: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ShipyardError(f"--{what} must look like package.module:ATTRIBUTE, not {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ShipyardError(f"cannot load --{what} {spec!r}: {error}") from None


async def _run(args: argparse.Namespace) -> int:
    from shipyard.eventsourcing import ProjectionRunner, open_event_store
    from shipyard.eventsourcing.projection import PROJECTIONS
    from shipyard.storage import open_database

    db = await open_database(args.db)
    try:
        store = await open_event_store(db)
        if args.projections_command == "status":
            async with db.transaction() as tx:
                await tx.execute(
                    f"CREATE TABLE IF NOT EXISTS {PROJECTIONS} (name TEXT PRIMARY KEY,"
                    " generation INTEGER NOT NULL, position BIGINT NOT NULL, state TEXT NOT NULL,"
                    " error TEXT, failed_position BIGINT, updated_at DOUBLE PRECISION NOT NULL)"
                )
                rows = await tx.fetch(
                    f"SELECT name, generation, position, state, error, failed_position"
                    f" FROM {PROJECTIONS} ORDER BY name"
                )
            if not rows:
                print("no projections installed")
            for name, generation, position, state, error, failed_at in rows:
                behind = await store.count_after(position)
                line = (
                    f"{name:<28} {state:<8} generation={generation} position={position}"
                    f" behind={behind}"
                )
                if error:
                    line += f" failed_at={failed_at}: {error.strip().splitlines()[-1][:100]}"
                print(line)
            return 0
        runner = ProjectionRunner(
            store, _load(args.registry, "registry"), _load(args.projections, "projections")
        )
        await runner.install()
        if args.projections_command == "resume":
            await runner.resume(args.name)
            print(f"projection {args.name} resumed")
            return 0

        async def progress(position: int) -> None:
            print(f"  rebuilt up to position {position}", flush=True)

        replayed = await runner.rebuild(args.name, on_progress=progress)
        print(f"projection {args.name} rebuilt from {replayed} events and swapped in")
        return 0
    finally:
        await db.close()
