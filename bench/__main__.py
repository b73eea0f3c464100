"""``make bench``: run every benchmark module (or the ones named on the command line)."""

from __future__ import annotations

import importlib
import sys

MODULES = (
    "resilience",
    "messaging",
    "discovery",
    "gateway",
    "client",
    "eventstore",
    "saga",
    "shop",
)


def main(argv: list[str]) -> int:
    """Run the named benchmark modules, all by default."""
    for name in argv or MODULES:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== bench/{name}.py ===", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
