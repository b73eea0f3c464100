"""Background tasks: stopping them by cancellation, and a base for loops that run in one.

A relay, a projection runner or a poller runs ``run()`` until cancelled. Stopping one is
always the same: cancel it, then wait until it has finished cleaning up, so its
``finally`` blocks have run before the caller closes what the loop used.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has finished; an error a task ended with (other
    than its cancellation) is raised."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class BackgroundRunner(abc.ABC):
    """Runs :meth:`run` as a background task: ``start()`` / ``await stop()``, or
    ``async with``. Subclasses set ``task_name`` (shown in task dumps)."""

    task_name = "shipyard-background"
    _task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run(self) -> None:
        """Work until cancelled."""

    def start(self) -> None:
        """Run :meth:`run` as a background task (no-op while it is running)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the background task and wait for it to finish."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
