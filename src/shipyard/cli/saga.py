"""``shipyard saga list|show ID|diagram NAME``: inspect sagas in a service's saga log."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import os
from typing import Any

from shipyard.core import ShipyardError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``saga`` sub-command."""
    saga = subparsers.add_parser("saga", help="list sagas, show a timeline, draw a definition")
    saga.add_argument(
        "--db",
        default=os.environ.get("SHIPYARD_DB", "sqlite:///shipyard.db"),
        help="the orchestrating service's database URL (default: $SHIPYARD_DB or "
        "sqlite:///shipyard.db)",
    )
    actions = saga.add_subparsers(dest="saga_command", required=True)
    listing = actions.add_parser("list", help="sagas, newest first")
    listing.add_argument("--state", help="RUNNING, COMPENSATING, COMPLETED or COMPENSATED")
    listing.add_argument("--name", help="only sagas of this definition")
    listing.add_argument("--limit", type=int, default=50)
    show = actions.add_parser("show", help="one saga: each step, attempt, error, compensation")
    show.add_argument("id")
    diagram = actions.add_parser("diagram", help="a saga definition as a Mermaid flowchart")
    diagram.add_argument("name")
    diagram.add_argument("--version", type=int, help="default: the latest recorded")
    diagram.add_argument(
        "--definition",
        help="import the definition from MODULE:ATTRIBUTE instead of reading the log",
    )
    saga.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; errors print one line and exit with status 1."""
    try:
        return asyncio.run(_run(args))
    except (ShipyardError, LookupError) as error:
        print(f"error: {error}")
        return 1


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


async def _run(args: argparse.Namespace) -> int:
    from shipyard.saga import SagaState, mermaid, saga_diagram, saga_log_for
    from shipyard.storage import open_database

    if args.saga_command == "diagram" and args.definition:
        module_name, _, attribute = args.definition.partition(":")
        definition = getattr(importlib.import_module(module_name), attribute)
        print(saga_diagram(definition), end="")
        return 0
    db = await open_database(args.db)
    try:
        log = saga_log_for(db)
        await log.install()
        if args.saga_command == "list":
            state = None
            if args.state:
                if args.state.upper() not in SagaState.__members__:
                    print(f"error: unknown state {args.state!r}; one of {', '.join(SagaState)}")
                    return 1
                state = SagaState(args.state.upper())
            records = await log.list(state=state, name=args.name, limit=args.limit)
            if not records:
                print("no sagas")
            for r in records:
                where = r.failed_step or "-"
                print(
                    f"{r.saga_id:<38} {r.name:<16} v{r.version:<3} {r.state.value:<13} "
                    f"step={r.position} failed={where} {_when(r.updated_at)}"
                )
            return 0
        if args.saga_command == "show":
            record = await log.get(args.id)
            print(f"saga:    {record.saga_id}")
            print(f"name:    {record.name} v{record.version}")
            print(f"state:   {record.state.value}")
            print(f"failed:  {record.failed_step or '-'}  {record.error or ''}".rstrip())
            print(f"data:    {record.data.decode('utf-8', 'replace')}")
            print("timeline:")
            for t in await log.timeline(args.id):
                error = f"  {t.error}" if t.error else ""
                print(
                    f"  {t.seq:>4}  {_when(t.at)}  {t.kind.value:<28} {t.step or '-':<20} "
                    f"attempt={t.attempt}{error}"
                )
            return 0
        version, shape = await log.definition(args.name, args.version)
        print(mermaid(args.name, shape, version=version), end="")
        return 0
    finally:
        await db.close()
