"""``shipyard up``: run the reference system on embedded defaults."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``up`` sub-command."""
    parser = subparsers.add_parser("up", help="run the reference system on embedded defaults")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start what exists of the reference system and block until interrupted."""
    print(
        "shipyard up: the reference shop is not built yet; the toolkit packages are ready.\n"
        "Try `make test`, or see README.md for the API tour."
    )
    return 0
