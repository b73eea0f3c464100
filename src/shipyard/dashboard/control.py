"""Killing and restarting instances: the :class:`ProcessControl` port the dashboard calls,
and :class:`SubprocessControl`, a small adapter over ``asyncio`` subprocesses.

A supervisor (the shop's ``shipyard up``) implements the protocol over the processes it
already runs; the dashboard never starts processes of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from shipyard.core import ConfigError, get_logger, validation
from shipyard.dashboard.errors import UnknownInstanceError

_log = get_logger("shipyard.dashboard")


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """One process the control can kill or restart; ``id`` is what kill/restart take
    (use the instance's registry id where there is one, so the page can match them)."""

    id: str
    service: str
    running: bool
    pid: int | None = None


class ProcessControl(Protocol):
    """What the dashboard needs to kill and restart instances."""

    async def instances(self) -> list[ManagedProcess]:
        """Every managed process, running or not."""
        ...

    async def kill(self, instance_id: str) -> None:
        """Kill the process at once (SIGKILL: no drain, no deregistration — a crash).
        Raises :class:`UnknownInstanceError` for an id it does not manage."""
        ...

    async def restart(self, instance_id: str) -> None:
        """Start the process again (stopping it first, gracefully, when it runs).
        Raises :class:`UnknownInstanceError` for an id it does not manage."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """How to start one instance: ``argv`` run in ``cwd`` with ``env`` (``None``: this
    process's environment); output goes to ``log_path`` (appended) or is discarded."""

    service: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    log_path: str | None = None

    def __post_init__(self) -> None:
        if not self.service:
            raise ConfigError("service", self.service, "must name the service")
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ConfigError("argv", self.argv, "must be a non-empty list of strings")


class SubprocessControl:
    """A :class:`ProcessControl` over local subprocesses, one per instance id.

    ``await control.start()`` launches every process; ``kill`` sends SIGKILL; ``restart``
    sends SIGTERM (SIGKILL after ``stop_timeout`` seconds) when the process runs, then
    starts it again; ``aclose()`` stops them all.
    """

    def __init__(self, specs: Mapping[str, ProcessSpec], *, stop_timeout: float = 10.0) -> None:
        if not specs:
            raise ConfigError("specs", specs, "must map at least one instance id to a spec")
        self.specs = dict(specs)
        self.stop_timeout = validation.positive("stop_timeout", stop_timeout)
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        # One lock per instance: a double-clicked restart must not start two copies.
        self._locks = {instance_id: asyncio.Lock() for instance_id in self.specs}

    async def start(self) -> None:
        """Start every process that is not running."""
        for instance_id in self.specs:
            async with self._locks[instance_id]:
                if not self._running(instance_id):
                    await self._spawn(instance_id)

    async def instances(self) -> list[ManagedProcess]:
        """Every process, running or not, in the order given."""
        found = []
        for instance_id, spec in self.specs.items():
            process = self._processes.get(instance_id)
            running = self._running(instance_id)
            pid = process.pid if process is not None and running else None
            found.append(ManagedProcess(instance_id, spec.service, running, pid))
        return found

    async def kill(self, instance_id: str) -> None:
        """SIGKILL the process (a no-op when it is not running)."""
        async with self._lock(instance_id):
            process = self._processes.get(instance_id)
            if process is None or process.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            _log.warning("instance killed", instance=instance_id, pid=process.pid)

    async def restart(self, instance_id: str) -> None:
        """Stop the process gracefully when it runs, then start it again."""
        async with self._lock(instance_id):
            await self._stop(instance_id)
            await self._spawn(instance_id)

    async def aclose(self) -> None:
        """Stop every process gracefully (SIGKILL after ``stop_timeout``)."""
        await asyncio.gather(*(self._stop(i) for i in self.specs))

    # -- internals ------------------------------------------------------------------------

    def _lock(self, instance_id: str) -> asyncio.Lock:
        lock = self._locks.get(instance_id)
        if lock is None:
            raise UnknownInstanceError(instance_id, self.specs)
        return lock

    def _running(self, instance_id: str) -> bool:
        process = self._processes.get(instance_id)
        return process is not None and process.returncode is None

    async def _spawn(self, instance_id: str) -> None:
        spec = self.specs[instance_id]
        env = None if spec.env is None else {**os.environ, **spec.env}
        if spec.log_path is None:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        else:
            # Opening a local log file for append does not block in any way that matters.
            log = open(spec.log_path, "ab")  # noqa: ASYNC230, SIM115
            try:
                process = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    cwd=spec.cwd,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            finally:
                # The child holds its own copy of the descriptor.
                log.close()
        self._processes[instance_id] = process
        _log.info("instance started", instance=instance_id, pid=process.pid)

    async def _stop(self, instance_id: str) -> None:
        process = self._processes.get(instance_id)
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
