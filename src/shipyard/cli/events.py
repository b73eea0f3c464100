"""``shipyard events dlq list|show ID|replay ID``: inspect and replay dead letters."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
from typing import Any

from shipyard.core import ShipyardError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``events`` sub-command."""
    events = subparsers.add_parser("events", help="event bus tools (dead letters)")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    dlq = events_sub.add_parser("dlq", help="list, inspect and replay dead letters")
    dlq.add_argument(
        "--db",
        default=os.environ.get("SHIPYARD_DB", "sqlite:///shipyard.db"),
        help="the consuming service's database URL (default: $SHIPYARD_DB or "
        "sqlite:///shipyard.db)",
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = actions.add_parser("list", help="dead letters not yet replayed")
    listing.add_argument("--group", help="only this consumer group")
    listing.add_argument("--all", action="store_true", help="include replayed ones")
    show = actions.add_parser("show", help="one dead letter with its error and payload")
    show.add_argument("id", type=int)
    replay = actions.add_parser("replay", help="republish a dead letter to its group")
    replay.add_argument("id", type=int)
    replay.add_argument(
        "--transport",
        default=os.environ.get("SHIPYARD_TRANSPORT", "sqlite:///bus.db"),
        help="transport URL to publish on (default: $SHIPYARD_TRANSPORT or sqlite:///bus.db)",
    )
    replay.add_argument("--stream", help="JetStream stream name (nats:// only)")
    dlq.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``dlq`` action; errors print one line and exit with status 1."""
    try:
        return asyncio.run(_run(args))
    except ShipyardError as error:
        print(f"error: {error}")
        return 1


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds")


async def _run(args: argparse.Namespace) -> int:
    from shipyard.messaging import DeadLetterStore, install_schema, open_transport
    from shipyard.storage import open_database

    db = await open_database(args.db)
    try:
        await install_schema(db)
        store = DeadLetterStore(db)
        if args.dlq_command == "list":
            letters = await store.list(group=args.group, include_replayed=args.all)
            if not letters:
                print("no dead letters")
            for letter in letters:
                first_line = letter.error.strip().splitlines()[-1] if letter.error else ""
                print(
                    f"{letter.id:>6}  {_when(letter.failed_at)}  {letter.group:<16} "
                    f"{letter.name:<24} attempts={letter.attempts}  {first_line[:80]}"
                )
            return 0
        if args.dlq_command == "show":
            letter = await store.get(args.id)
            print(f"id:           {letter.id}")
            print(f"group:        {letter.group}")
            print(f"event:        {letter.name}  ({letter.event_id})")
            print(f"ordering key: {letter.ordering_key or '-'}")
            print(f"attempts:     {letter.attempts}")
            print(f"failed at:    {_when(letter.failed_at)}")
            print(f"replayed at:  {_when(letter.replayed_at)}")
            print(f"payload:      {letter.body.decode('utf-8', 'replace')}")
            print(f"error:\n{letter.error}")
            return 0
        options = {"stream": args.stream} if args.stream else {}
        transport = await open_transport(args.transport, **options)
        try:
            letter = await store.replay(args.id, transport)
        finally:
            await transport.close()
        print(
            f"replayed dead letter {letter.id} ({letter.name} {letter.event_id}) "
            f"to group {letter.group!r} via {args.transport}"
        )
        return 0
    finally:
        await db.close()
