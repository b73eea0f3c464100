"""The ``shipyard`` command line: one sub-command module per concern."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shipyard.cli import dashboard, events, gateway, projections, registry, run, saga, up

# Each module contributes one sub-command through ``register(subparsers)``.
_COMMANDS = (up, registry, events, gateway, run, projections, saga, dashboard)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="shipyard", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shipyard`` console script."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
