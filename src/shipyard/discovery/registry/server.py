"""``RegistryServer``: the catalog, check runner, snapshot and HTTP API in one lifecycle."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger
from shipyard.discovery.registry.api import RegistryApi
from shipyard.discovery.registry.catalog import Catalog
from shipyard.discovery.registry.checks import CheckRunner
from shipyard.discovery.registry.snapshot import SnapshotStore, SnapshotWriter

_log = get_logger("shipyard.discovery.registry")


class RegistryServer:
    """An embedded service registry speaking Consul's HTTP API.

    ``port=0`` picks a free port (read it from :attr:`port` after :meth:`start`).
    With ``data_path`` the catalog is snapshotted to that SQLite file and restored on
    start. ``clock`` times TTL expiry, deregistration of critical instances, blocking
    query waits and probe intervals; in tests with HTTP/TCP checks use
    ``ManualClock(auto_advance=False)``, since an auto-advancing clock would probe back to
    back. Use it as ``async with RegistryServer() as server:``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        data_path: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "must be an integer 0-65535 (0 picks a free port)")
        if not host:
            raise ConfigError("host", host, "must be a host name or IP address")
        self.host = host
        self._requested_port = port
        self._port = 0
        self._clock = clock
        self.catalog = Catalog(clock=clock)
        """The live catalog (read it in-process instead of over HTTP)."""
        self._api = RegistryApi(self.catalog, address=lambda: f"{self.host}:{self.port}")
        self._runner = CheckRunner(self.catalog, clock=clock)
        self._snapshot = (
            SnapshotWriter(self.catalog, SnapshotStore(data_path)) if data_path else None
        )
        self._web: web.AppRunner | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (valid after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Restore the snapshot, start the checks and listen."""
        if self._web is not None:
            return
        if self._stopped:
            self.catalog.reopen()
        if self._snapshot is not None:
            restored = self._snapshot.load()
            self._snapshot.start()
            _log.info("registry snapshot restored", instances=restored)
        await self._runner.start()
        app = self._api.build_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            await self._runner.stop()
            raise
        self._web = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else self._requested_port
        _log.info("registry listening", url=self.url)

    async def stop(self) -> None:
        """Close attach connections, stop checks and listening, flush the snapshot."""
        if self._web is None:
            return
        runner, self._web = self._web, None
        # Release blocking queries first: the web runner waits for in-flight requests.
        self.catalog.close()
        await self._api.close_sockets()
        await runner.cleanup()
        await self._runner.stop()
        if self._snapshot is not None:
            await self._snapshot.stop()
        self._stopped = True
        _log.info("registry stopped", url=self.url)

    async def __aenter__(self) -> RegistryServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
