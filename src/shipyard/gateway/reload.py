"""Watching the config file: poll its mtime and reload when it changes.

Polling (not inotify) works the same on every filesystem, including bind mounts and
Kubernetes ConfigMaps, whose files are replaced by renaming a symlink. The interval is
real time on purpose: the file's mtime is set by the real world, which a fake clock
cannot advance.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from shipyard.core import cancel_and_wait, validation
from shipyard.core.logging import get_logger

_log = get_logger("shipyard.gateway.reload")

Signature = tuple[int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class ConfigWatcher:
    """Calls ``on_change`` whenever the file at ``path`` changes (checked each interval)."""

    def __init__(
        self, path: str | Path, on_change: Callable[[], Awaitable[object]], *, interval: float
    ) -> None:
        self.path = Path(path)
        self.interval = validation.positive("interval", interval)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling in the background."""
        # Taken now, not when the task first runs: a change in between must count.
        self._task = asyncio.get_running_loop().create_task(self._run(_signature(self.path)))

    async def _run(self, last: Signature) -> None:
        while True:
            await asyncio.sleep(self.interval)
            current = _signature(self.path)
            if current is None or current == last:
                continue  # a missing file (mid-rename) is not a change worth reloading
            last = current
            try:
                await self._on_change()
            except Exception:
                _log.exception("config reload failed", path=str(self.path))

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
