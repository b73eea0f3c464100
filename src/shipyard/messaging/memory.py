"""In-process transport: a list as the log, a dict of group positions. For tests and demos."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shipyard.messaging.errors import TransportError
from shipyard.messaging.events import WireMessage
from shipyard.messaging.transport import Delivery, StartFrom


class MemoryTransport:
    """A transport that lives and dies with the process (positions survive re-subscribing)."""

    def __init__(self) -> None:
        self._log: list[WireMessage] = []
        self._positions: dict[str, int] = {}
        self._waiters: set[asyncio.Event] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """``memory://``."""
        return "memory://"

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        """Append ``messages`` and wake waiting fetches."""
        if self._closed:
            raise TransportError("memory transport is closed; open a new one")
        self._log.extend(messages)
        for waiter in self._waiters:
            waiter.set()

    async def subscribe(
        self, group: str, *, start_from: StartFrom = "beginning"
    ) -> MemorySubscription:
        """Open ``group``'s cursor (new groups start at the beginning or at the end)."""
        if group not in self._positions:
            self._positions[group] = 0 if start_from == "beginning" else len(self._log)
        return MemorySubscription(self, group)

    async def close(self) -> None:
        """Refuse further publishes and wake every waiting fetch."""
        self._closed = True
        for waiter in self._waiters:
            waiter.set()


class MemorySubscription:
    """A group's cursor on a :class:`MemoryTransport`."""

    def __init__(self, transport: MemoryTransport, group: str) -> None:
        self._transport = transport
        self._group = group
        # Fetched but not yet acknowledged messages are ahead of the committed position.
        self._cursor = transport._positions[group]
        self._wake = asyncio.Event()
        transport._waiters.add(self._wake)

    async def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Next messages after the cursor, waiting up to ``max_wait`` for one to arrive."""
        log = self._transport._log
        if self._cursor >= len(log) and not self._transport._closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max_wait)
            except TimeoutError:
                return []
        batch = log[self._cursor : self._cursor + max_messages]
        start = self._cursor
        self._cursor += len(batch)
        return [Delivery(message, start + i + 1) for i, message in enumerate(batch)]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Move the group's committed position past ``deliveries``."""
        if deliveries:
            positions = self._transport._positions
            positions[self._group] = max(positions[self._group], deliveries[-1].position)

    async def close(self) -> None:
        """Stop waiting for messages."""
        self._transport._waiters.discard(self._wake)
