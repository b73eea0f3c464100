"""Reads that arrive while one is in flight share the next query.

On SQLite every read is a hop to a reader thread, and with one read in flight per task
(many commands loading their aggregates at once) the reader threads and the event loop
spend their time handing the interpreter lock to each other instead of reading. A
:class:`ReadBatcher` keeps ONE read in flight: a lone read runs as it is (no batching
cost), and whatever queues up meanwhile is answered by a single query for all of it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ReadBatcher(Generic[K, V]):
    """``read(key)`` through ``one(key)`` when nothing is in flight, else queued for
    ``many(keys)`` (one value per key, in order; at most ``max_batch`` keys a query)."""

    def __init__(
        self,
        one: Callable[[K], Awaitable[V]],
        many: Callable[[Sequence[K]], Awaitable[list[V]]],
        *,
        max_batch: int,
    ) -> None:
        self._one = one
        self._many = many
        self._max_batch = max_batch
        self._busy = False
        self._queue: deque[tuple[K, asyncio.Future[V]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: K) -> V:
        """The value for ``key``, read alone or with the reads queued beside it."""
        if self._busy:
            future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
            self._queue.append((key, future))
            return await future
        self._busy = True
        try:
            return await self._one(key)
        finally:
            if self._queue:
                task = asyncio.create_task(self._drain())  # keeps _busy until it is done
                self._tasks.add(task)  # the loop holds tasks weakly
                task.add_done_callback(self._tasks.discard)
            else:
                self._busy = False

    async def _drain(self) -> None:
        batch: list[tuple[K, asyncio.Future[V]]] = []
        try:
            while self._queue:
                take = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
                batch = [entry for entry in batch if not entry[1].done()]  # cancelled
                if not batch:
                    continue
                try:
                    values = await self._many([key for key, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), value in zip(batch, values, strict=True):
                    if not future.done():
                        future.set_result(value)
                batch = []
        except BaseException:
            # Cancelled (the loop is shutting down): nobody may wait forever.
            for _, future in (*batch, *self._queue):
                future.cancel()
            self._queue.clear()
            raise
        finally:
            self._busy = False
