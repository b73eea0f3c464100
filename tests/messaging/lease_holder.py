"""A process that joins a bus group on the SQLite log and reports its lease, for the
group-lease tests: ``python -m tests.messaging.lease_holder BUS_URL GROUP LEASE_SECONDS``.

It prints ``CONSUMING`` or ``STANDBY`` at start and again whenever that changes (checked
every 50 ms), and consumes nothing: the tests only watch who holds the group.
"""

from __future__ import annotations

import asyncio
import sys

from shipyard.messaging import SqliteTransport, open_transport


async def main(url: str, group: str, lease: float) -> None:
    transport = await open_transport(url, group_lease=lease)
    assert isinstance(transport, SqliteTransport)
    subscription = await transport.subscribe(group)
    shown = None
    while True:
        state = "CONSUMING" if subscription.consuming else "STANDBY"
        if state != shown:
            print(state, flush=True)
            shown = state
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
