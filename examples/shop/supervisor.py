"""The shop's supervisor: starts the registry, every service instance (one process each)
and the gateway; reports readiness; kills and restarts instances on demand; stops
everything cleanly.

Each child runs in its own session (process group), so Ctrl-C in the terminal reaches only
the supervisor, which then stops the children in order: gateway first, then the services
(SIGTERM to each group, SIGKILL to groups still alive after ``stop_timeout``). On Linux the
children also get SIGKILL if the supervisor itself dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the supervisor leaves no orphans. Nothing is restarted automatically: a
killed instance stays down until :meth:`Supervisor.restart` (the dashboard's button).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from examples.shop.gateway import gateway_config, write_gateway_config
from examples.shop.serve import SERVICES
from examples.shop.settings import Flow, ShopSettings

from shipyard.core import ConfigError, ShipyardError, get_logger
from shipyard.discovery import Discovery, Registration, RegistryServer

_log = get_logger("shop.supervisor")

DEFAULT_INSTANCES: Mapping[str, int] = {"inventory": 2}
"""Instances per service when not told otherwise (1 for the others)."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding ``examples/`` (put on the children's ``PYTHONPATH``)."""

_PR_SET_PDEATHSIG = 1


class SupervisorError(ShipyardError, RuntimeError):
    """An instance did not start (its log says why), or no such instance exists."""


@dataclass
class Instance:
    """One process of a service (or the gateway)."""

    id: str
    service: str
    index: int
    port: int
    consumer: bool = True
    process: subprocess.Popen[bytes] | None = None
    started_at: float | None = None
    restarts: int = 0
    log_path: Path | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.process.pid if self.running and self.process is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def describe(self) -> dict[str, Any]:
        """The instance as the dashboard shows it."""
        return {
            "id": self.id,
            "service": self.service,
            "port": self.port,
            "url": self.url,
            "pid": self.pid,
            "running": self.running,
            "restarts": self.restarts,
            "consumer": self.consumer,
            "log": None if self.log_path is None else str(self.log_path),
        }


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGKILL when the
    # supervisor dies, whatever killed it.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    """Runs the whole shop on one machine.

    ``base_port``: services listen from there up (in plan order); ``None`` picks free
    ports (tests). ``gateway_port`` / ``registry_port`` likewise (``0``: a free port).
    ``instances`` overrides :data:`DEFAULT_INSTANCES`. ``settings`` defaults to the
    embedded profile under ``var``.
    """

    def __init__(
        self,
        var: Path,
        *,
        host: str = "127.0.0.1",
        registry_port: int = 8500,
        gateway_port: int = 8080,
        gateway_admin_port: int = 0,
        base_port: int | None = 8600,
        instances: Mapping[str, int] | None = None,
        flow: Flow = "orchestrated",
        settings: ShopSettings | None = None,
        catalog_weight: float = 0.0,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        python: str = sys.executable,
        gateway: bool = True,
    ) -> None:
        self.var = Path(var).resolve()
        self.host = host
        self.registry_port = registry_port or free_port(host)
        self.gateway_port = gateway_port or free_port(host)
        self.gateway_admin_port = gateway_admin_port or free_port(host)
        self.settings = settings or ShopSettings.embedded(
            self.var, f"consul://{host}:{self.registry_port}", flow=flow
        )
        self.catalog_weight = catalog_weight
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.with_gateway = gateway
        self.admin_token = self.settings.chaos_token
        self.registry: RegistryServer | None = None
        self.ready_in: float | None = None
        self._counts = {**DEFAULT_INSTANCES, **(instances or {})}
        for service, count in self._counts.items():
            if service not in SERVICES:
                raise ConfigError("instances", service, f"must name a service: {sorted(SERVICES)}")
            if count < 1:
                raise ConfigError(f"instances[{service}]", count, "must be >= 1")
        self._instances: dict[str, Instance] = {}
        port = base_port
        for service in SERVICES:
            for index in range(self._counts.get(service, 1)):
                instance_id = f"{service}-{index + 1}"
                if port is None:
                    chosen = free_port(host)
                else:
                    chosen, port = port, port + 1
                # Every instance consumes: JetStream shares a group between competing
                # consumers; on the SQLite log one instance holds the group's lease and
                # the others stand by to take over when it dies.
                self._instances[instance_id] = Instance(instance_id, service, index, chosen)
        self.gateway = Instance("gateway-1", "gateway", 0, self.gateway_port, consumer=False)
        self._logs: dict[str, TextIO] = {}

    # -- reading ------------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[Instance]:
        """Every instance (the gateway last), or those of ``service``."""
        every = [*self._instances.values(), self.gateway]
        return [i for i in every if service is None or i.service == service]

    def instance(self, instance_id: str) -> Instance:
        """The instance called ``instance_id`` (``inventory-2``, ``gateway-1``)."""
        if instance_id == self.gateway.id:
            return self.gateway
        try:
            return self._instances[instance_id]
        except KeyError:
            known = ", ".join([*self._instances, self.gateway.id])
            raise SupervisorError(f"no instance {instance_id!r}; known: {known}") from None

    def url(self, service: str) -> str:
        """The URL of the first instance of ``service`` (direct, not through the gateway)."""
        return self.instances(service)[0].url

    @property
    def gateway_url(self) -> str:
        """Where the gateway listens."""
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def gateway_admin_url(self) -> str:
        """The gateway's admin API (bearer token: :attr:`admin_token`)."""
        return f"http://{self.host}:{self.gateway_admin_port}"

    def describe(self) -> dict[str, Any]:
        """The system as the dashboard shows it."""
        return {
            "registry": None if self.registry is None else self.registry.url,
            "gateway": self.gateway_url,
            "gateway_admin": self.gateway_admin_url,
            "flow": self.settings.flow,
            "profile": self.settings.profile,
            "instances": [i.describe() for i in self.instances()],
        }

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the registry, every instance and the gateway; return when all are ready.

        Raises :class:`SupervisorError` naming the instances that did not become ready
        within ``start_timeout`` (after stopping everything again).
        """
        began = time.monotonic()
        (self.var / "logs").mkdir(parents=True, exist_ok=True)
        self.registry = RegistryServer(
            self.host, self.registry_port, data_path=str(self.var / "registry.db")
        )
        await self.registry.start()
        try:
            starting = list(self._instances.values())
            if self.with_gateway:
                # The gateway finds upstreams through the registry when they are called,
                # so it starts beside the services rather than after them.
                self._write_gateway_config()
                starting.append(self.gateway)
            for instance in starting:
                self._spawn(instance)
            await self._wait_ready(starting)
            if self.with_gateway:
                await self._register_gateway()
        except BaseException:
            await self.stop()
            raise
        self.ready_in = time.monotonic() - began

    async def _register_gateway(self) -> None:
        """List the gateway in the registry like any service, so the dashboard finds it:
        health from the admin listener's open ``/health``, metrics from its ``/metrics``
        there (behind the admin token, which the dashboard holds)."""
        admin = f"http://{self.host}:{self.gateway_admin_port}"
        discovery = Discovery(f"consul://{self.host}:{self.registry_port}")
        try:
            await discovery.register(
                Registration(
                    name="gateway",
                    id=self.gateway.id,
                    address=self.host,
                    port=self.gateway_port,
                    meta={"metrics_port": str(self.gateway_admin_port), "metrics_auth": "bearer"},
                    http_check=f"{admin}/health",
                    interval=1.0,
                    deregister_after=None,
                )
            )
        finally:
            await discovery.aclose()

    async def kill(self, instance_id: str) -> None:
        """SIGKILL the instance's process group (a crash, for chaos runs)."""
        instance = self.instance(instance_id)
        await self._signal_and_wait(instance, signal.SIGKILL)
        _log.info("instance killed", instance=instance_id)

    async def stop_instance(self, instance_id: str) -> None:
        """Stop one instance gracefully (SIGTERM, then SIGKILL after ``stop_timeout``)."""
        await self._stop(self.instance(instance_id))

    async def restart(self, instance_id: str) -> None:
        """Start the instance again (stopping it first if it runs) and wait until ready."""
        instance = self.instance(instance_id)
        if instance.running:
            await self._stop(instance)
        instance.restarts += 1
        self._spawn(instance)
        await self._wait_ready([instance])
        _log.info("instance restarted", instance=instance_id)

    async def stop(self) -> None:
        """Stop the gateway, then every service instance; close the registry."""
        await self._stop(self.gateway)
        await asyncio.gather(*(self._stop(i) for i in self._instances.values()))
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self.registry is not None:
            await self.registry.stop()
            self.registry = None

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- internals ----------------------------------------------------------------------

    def _command(self, instance: Instance) -> list[str]:
        if instance is self.gateway:
            return [
                self.python,
                "-m",
                "shipyard.cli",
                "gateway",
                "--config",
                str(self.var / "gateway.yaml"),
                "--discovery",
                self.settings.registry,
            ]
        return [
            self.python,
            "-m",
            "examples.shop.serve",
            instance.service,
            "--host",
            self.host,
            "--port",
            str(instance.port),
        ]

    def _environment(self, instance: Instance) -> dict[str, str]:
        settings = self.settings.for_instance(instance.index, consumer=instance.consumer)
        path = os.environ.get("PYTHONPATH")
        return {
            **os.environ,
            **settings.environment(),
            "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, instance: Instance) -> None:
        log = self._logs.get(instance.id)
        if log is None:
            instance.log_path = self.var / "logs" / f"{instance.id}.log"
            log = self._logs[instance.id] = instance.log_path.open("a", encoding="utf-8")
        instance.process = subprocess.Popen(
            self._command(instance),
            cwd=self.var.parent,
            env=self._environment(instance),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        instance.started_at = time.monotonic()

    async def _wait_ready(self, instances: list[Instance]) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = list(instances)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            while pending:
                for instance in list(pending):
                    if not instance.running:
                        code = instance.process and instance.process.poll()
                        raise SupervisorError(
                            f"{instance.id} exited with {code} while starting;"
                            f" see {instance.log_path}"
                        )
                    if await self._ready(http, instance):
                        pending.remove(instance)
                if not pending:
                    return
                if time.monotonic() > deadline:
                    names = ", ".join(i.id for i in pending)
                    raise SupervisorError(
                        f"not ready after {self.start_timeout:.0f} s: {names};"
                        f" see {self.var / 'logs'}"
                    )
                await asyncio.sleep(0.05)

    async def _ready(self, http: aiohttp.ClientSession, instance: Instance) -> bool:
        if instance is self.gateway:
            try:
                _, writer = await asyncio.open_connection(self.host, instance.port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        try:
            async with http.get(f"{instance.url}/health/ready") as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop(self, instance: Instance) -> None:
        if not instance.running:
            return
        await self._signal_and_wait(instance, signal.SIGTERM)
        if instance.running:
            _log.warning("instance ignored SIGTERM; killing it", instance=instance.id)
            await self._signal_and_wait(instance, signal.SIGKILL)

    async def _signal_and_wait(self, instance: Instance, sig: int) -> None:
        process = instance.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        # Popen.wait in a thread: the loop stays free, and no polling interval to tune.
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, self.stop_timeout)
        code = process.poll()
        if code is not None:
            instance.exit_codes.append(code)
            # Anything the service started in its group goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def _write_gateway_config(self) -> None:
        config = gateway_config(
            host=self.host,
            port=self.gateway_port,
            admin_port=self.gateway_admin_port,
            admin_token=self.admin_token,
            jwt_secret=self.settings.jwt_secret,
            access_log=self.var / "logs" / "gateway-access.log",
            catalog_weight=self.catalog_weight,
            cache_store=self.settings.redis or "memory://",
            rate_limit_store=self.settings.redis or "memory://",
        )
        write_gateway_config(self.var / "gateway.yaml", config)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def memory_in_use(supervisor: Supervisor) -> int:
    """Resident memory (bytes) of the supervisor and every running instance (Linux)."""
    total = _rss(os.getpid())
    for instance in supervisor.instances():
        if instance.pid is not None:
            total += _rss(instance.pid)
    return total
