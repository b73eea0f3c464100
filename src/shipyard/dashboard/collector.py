"""The collector: polls the registry, every instance's ``/metrics`` and chaos endpoint,
the saga query API and the process control, and publishes a :class:`Snapshot` each time
the picture changes.

It polls every ``interval`` seconds and, between polls, holds a blocking query on the
registry, so an instance that dies or leaves shows at once rather than on the next tick.
Everything it reads is a public HTTP surface: it works against any Shipyard system (or a
real Consul), in this process or not.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from shipyard.chaos import Fault
from shipyard.core import (
    SYSTEM_CLOCK,
    Clock,
    ConfigError,
    EventPublisher,
    cancel_and_wait,
    get_logger,
    validation,
)
from shipyard.dashboard.control import ProcessControl
from shipyard.dashboard.errors import SourceUnavailable
from shipyard.dashboard.faults import CHAOS_PATH, Target, send_faults
from shipyard.dashboard.scrape import InstanceSample, RateWindow, parse_metrics
from shipyard.dashboard.snapshot import (
    BreakerView,
    CheckView,
    DatabasePoolView,
    FlowView,
    InstanceView,
    LimiterView,
    RequestsView,
    SagasView,
    SagaView,
    ServiceView,
    Snapshot,
)

_log = get_logger("shipyard.dashboard")

SAGA_STATES = ("RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED")
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2}
# Saga timeline entries that move work between the orchestrator and a participant.
_FLOW_KINDS = frozenset({"step_completed", "step_failed", "command_sent", "compensation_completed"})
_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


def http_base(url: str, field: str) -> str:
    """``http://host:port`` from ``consul://host:port`` or an ``http(s)://`` URL."""
    parts = urlsplit(url)
    if parts.scheme == "consul" and parts.hostname:
        return f"http://{parts.hostname}:{parts.port or 8500}"
    if parts.scheme in ("http", "https") and parts.hostname:
        return url.rstrip("/")
    raise ConfigError(field, url, "must be http://host:port (or consul://host:port)")


class Collector:
    """Builds :class:`Snapshot` s of a running system; see the module docs.

    * ``registry_url``: the registry (Consul HTTP API) as ``http://`` or ``consul://``.
    * ``saga_api_url``: base URL of a saga query API (``shipyard.saga.saga_api``), or
      ``None`` to show no sagas; ``recent_sagas`` timelines are shown, and each state is
      counted up to ``saga_count_limit``.
    * ``chaos_token``: read each instance's faults from ``/admin/chaos`` (``None``: not
      shown). ``control``: the processes that can be killed and restarted.
    * ``interval``: seconds between polls; ``rate_window``: seconds over which failure
      and request rates are computed; ``request_timeout``: per HTTP read.
    """

    def __init__(
        self,
        registry_url: str,
        *,
        saga_api_url: str | None = None,
        chaos_token: str | None = None,
        control: ProcessControl | None = None,
        interval: float = 1.0,
        rate_window: float = 30.0,
        recent_sagas: int = 10,
        saga_count_limit: int = 1000,
        request_timeout: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry_url = http_base(registry_url, "registry_url")
        self.saga_api_url = (
            None if saga_api_url is None else http_base(saga_api_url, "saga_api_url")
        )
        self.chaos_token = chaos_token
        self.control = control
        self.interval = validation.positive("interval", interval)
        self.recent_sagas = validation.at_least("recent_sagas", recent_sagas, 0)
        self.saga_count_limit = validation.at_least("saga_count_limit", saga_count_limit, 1)
        self.request_timeout = validation.positive("request_timeout", request_timeout)
        self.clock = clock
        self.rates = RateWindow(rate_window)
        self.events: EventPublisher[Snapshot] = EventPublisher("dashboard")
        """Every new snapshot, as it is taken (only when something changed)."""
        self.snapshot = Snapshot(0, clock.now(), None, [], None, [], None, control=False)
        """The latest snapshot (version 0 until the first poll)."""
        self._last_content = b""
        self._saga_cache: dict[str, tuple[float, SagaView]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def aclose(self) -> None:
        """Stop polling and close the HTTP session."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Poll until cancelled."""
        watcher = asyncio.get_running_loop().create_task(self._watch_registry())
        try:
            while True:
                self._wake.clear()
                try:
                    await self.refresh()
                except Exception:
                    _log.exception("dashboard poll failed")
                await self._pause()
        finally:
            await cancel_and_wait(watcher)

    async def _pause(self) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(self.interval))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _watch_registry(self) -> None:
        # Blocking queries on the catalog: any registration, deregistration or health
        # change bumps its index and ends the wait, which wakes the poll loop.
        index = 0
        url = self.registry_url + "/v1/catalog/services"
        while True:
            params = {"index": str(index), "wait": "30s"} if index else None
            try:
                async with self._client().get(
                    url, params=params, timeout=aiohttp.ClientTimeout(total=40)
                ) as response:
                    await response.read()
                    new = int(response.headers.get("X-Consul-Index", "0"))
            except _ERRORS:
                await self.clock.sleep(self.interval)
                continue
            if index and new != index:
                self._wake.set()
            # An index that went backwards means the registry restarted: start over.
            index = new if new >= index else 0

    # -- polling --------------------------------------------------------------------------

    async def refresh(self) -> Snapshot:
        """Poll everything once; publish and return the snapshot (the previous one, with
        the same version, when nothing changed)."""
        async with self._lock:
            now = self.clock.monotonic()
            services, registry_error = await self._services(now)
            sagas = await self._sagas() if self.saga_api_url is not None else None
            processes = None
            if self.control is not None:
                try:
                    processes = await self.control.instances()
                except Exception:
                    _log.exception("process control failed to list instances")
            candidate = Snapshot(
                version=0,
                taken_at=0.0,
                registry_error=registry_error,
                services=services,
                sagas=sagas,
                flows=_flows(services, sagas),
                processes=processes,
                control=self.chaos_token is not None,
            )
            content = msgspec.json.encode(candidate)
            if content == self._last_content:
                return self.snapshot
            self._last_content = content
            self.snapshot = dataclasses.replace(
                candidate, version=self.snapshot.version + 1, taken_at=self.clock.now()
            )
            self.events.emit(self.snapshot)
            return self.snapshot

    async def send_faults(self, service: str, faults: Sequence[Fault]) -> dict[str, dict[str, Any]]:
        """Set ``faults`` (clear them when empty) on every registered instance of
        ``service``, healthy or not; the result per instance id (see
        :func:`~shipyard.dashboard.faults.send_faults`).

        Raises ``LookupError`` when no instance is registered, :class:`SourceUnavailable`
        when the registry cannot be read, ``ConfigError`` without a chaos token.
        """
        if self.chaos_token is None:
            raise ConfigError("chaos_token", None, "must be set to inject faults")
        targets = await self.targets(service)
        if not targets:
            raise LookupError(f"no registered instance of service {service!r}")
        return await send_faults(
            self._client(),
            targets,
            faults,
            token=self.chaos_token,
            request_timeout=self.request_timeout,
        )

    async def targets(self, service: str) -> list[Target]:
        """Every registered instance of ``service`` (healthy or not), read fresh from the
        registry — where the chaos controls send faults."""
        entries = await self._get_json(
            f"{self.registry_url}/v1/health/service/{quote(service, safe='')}"
        )
        found = []
        for entry in entries or []:
            svc = entry.get("Service") or {}
            address = svc.get("Address") or (entry.get("Node") or {}).get("Address", "")
            found.append(Target(str(svc.get("ID", "")), f"http://{address}:{svc.get('Port')}"))
        return found

    async def _services(self, now: float) -> tuple[list[ServiceView], str | None]:
        try:
            names = await self._get_json(self.registry_url + "/v1/catalog/services")
            health = await asyncio.gather(
                *(
                    self._get_json(f"{self.registry_url}/v1/health/service/{quote(n, safe='')}")
                    for n in sorted(names or {})
                )
            )
        except SourceUnavailable as exc:
            return [], str(exc)
        entries = [entry for answer in health for entry in answer or []]
        instances = await asyncio.gather(*(self._instance(entry, now) for entry in entries))
        by_service: dict[str, list[InstanceView]] = {}
        for instance in instances:
            by_service.setdefault(instance.service, []).append(instance)
        self.rates.keep_only(
            key
            for instance in instances
            for key in [(instance.id, "requests")]
            + [(instance.id, "breaker", b.name) for b in instance.breakers]
        )
        views = []
        for name in sorted(by_service):
            members = sorted(by_service[name], key=lambda i: i.id)
            best = min((_SEVERITY.get(i.status, 2) for i in members), default=2)
            views.append(ServiceView(name, _status_name(best), members))
        return views, None

    async def _instance(self, entry: Mapping[str, Any], now: float) -> InstanceView:
        svc = entry.get("Service") or {}
        address = svc.get("Address") or (entry.get("Node") or {}).get("Address", "")
        port = int(svc.get("Port") or 0)
        instance_id = str(svc.get("ID", ""))
        checks = [
            CheckView(
                str(c.get("Name") or c.get("CheckID", "")),
                str(c.get("Status", "critical")),
                str(c.get("Output") or "")[:200],
            )
            for c in entry.get("Checks") or []
        ]
        worst = max((_SEVERITY.get(c.status, 2) for c in checks), default=0)
        base = f"http://{address}:{port}"
        metrics_url, metrics_headers = self._metrics_source(address, base, svc.get("Meta"))
        metrics_error = None
        sample: InstanceSample | None = None
        faults = None
        try:
            text, faults = await asyncio.gather(
                self._get_text(metrics_url, metrics_headers), self._faults(base)
            )
            sample = parse_metrics(text)
        except SourceUnavailable as exc:
            metrics_error = str(exc)
        except ValueError as exc:
            metrics_error = f"{base}/metrics is not Prometheus text: {exc}"
        view = InstanceView(
            id=instance_id,
            service=str(svc.get("Service", "")),
            address=address,
            port=port,
            status=_status_name(worst),
            checks=checks,
            faults=faults,
            metrics_error=metrics_error,
        )
        if sample is None:
            return view
        return dataclasses.replace(
            view,
            requests=self._requests(instance_id, sample, now),
            breakers=self._breakers(instance_id, sample, now),
            limiters=[
                LimiterView(limiter.name, limiter.allowed, limiter.rejected)
                for limiter in sorted(sample.limiters.values(), key=lambda x: x.name)
            ],
            pools=[
                DatabasePoolView(p.database, p.pool, p.size, p.in_use, p.waiting, p.rejected)
                for _, p in sorted(sample.pools.items())
            ],
            upstream=_upstream(sample),
        )

    def _requests(self, instance_id: str, sample: InstanceSample, now: float) -> RequestsView:
        delta = self.rates.delta(
            (instance_id, "requests"), now, sample.requests, sample.request_errors
        )
        per_second = error_rate = None
        if delta is not None:
            seconds, (total, errors) = delta
            per_second = round(total / seconds, 3) if seconds > 0 else None
            error_rate = round(errors / total, 4) if total else None
        return RequestsView(sample.requests, sample.request_errors, per_second, error_rate)

    def _breakers(self, instance_id: str, sample: InstanceSample, now: float) -> list[BreakerView]:
        views = []
        for breaker in sorted(sample.breakers.values(), key=lambda b: (b.source, b.name)):
            delta = self.rates.delta(
                (instance_id, "breaker", breaker.name), now, breaker.successes, breaker.failures
            )
            # Until the window has two samples, the rate since the instance started.
            successes, failures = (
                (breaker.successes, breaker.failures) if delta is None else delta[1]
            )
            calls = successes + failures
            views.append(
                BreakerView(
                    name=breaker.name,
                    state=breaker.state,
                    failure_rate=round(failures / calls, 4) if calls else None,
                    successes=breaker.successes,
                    failures=breaker.failures,
                    rejected=breaker.rejected,
                    source=breaker.source,
                )
            )
        return views

    async def _faults(self, base: str) -> list[dict[str, Any]] | None:
        if self.chaos_token is None:
            return None
        headers = {"Authorization": f"Bearer {self.chaos_token}"}
        try:
            async with self._client().get(
                base + CHAOS_PATH, headers=headers, timeout=self._timeout()
            ) as response:
                if response.status != 200:
                    return None
                answer = await response.json(content_type=None)
        except _ERRORS:
            return None
        faults = answer.get("faults") if isinstance(answer, dict) else None
        return faults if isinstance(faults, list) else None

    async def _sagas(self) -> SagasView:
        base = self.saga_api_url
        limit = self.saga_count_limit
        try:
            counted = await asyncio.gather(
                *(self._get_json(f"{base}/sagas?state={s}&limit={limit}") for s in SAGA_STATES)
            )
            counts = {
                state: len(answer.get("sagas", []))
                for state, answer in zip(SAGA_STATES, counted, strict=True)
            }
            recent: list[SagaView] = []
            if self.recent_sagas:
                listing = await self._get_json(f"{base}/sagas?limit={self.recent_sagas}")
                recent = list(
                    await asyncio.gather(*(self._saga(row) for row in listing.get("sagas", [])))
                )
        except (SourceUnavailable, AttributeError, TypeError) as exc:
            return SagasView(count_limit=limit, error=str(exc) or type(exc).__name__)
        keep = {saga.saga_id for saga in recent}
        self._saga_cache = {k: v for k, v in self._saga_cache.items() if k in keep}
        return SagasView(counts, limit, recent)

    async def _saga(self, row: Mapping[str, Any]) -> SagaView:
        saga_id = str(row["saga_id"])
        updated = float(row.get("updated_at") or 0)
        cached = self._saga_cache.get(saga_id)
        if cached is not None and cached[0] == updated:
            return cached[1]
        detail = await self._get_json(f"{self.saga_api_url}/sagas/{quote(saga_id, safe='')}")
        view = SagaView(
            saga_id=saga_id,
            name=str(detail.get("name", "")),
            state=str(detail.get("state", "")),
            failed_step=detail.get("failed_step"),
            error=detail.get("error"),
            created_at=float(detail.get("created_at") or 0),
            updated_at=float(detail.get("updated_at") or 0),
            timeline=list(detail.get("timeline") or []),
        )
        self._saga_cache[saga_id] = (updated, view)
        return view

    # -- HTTP -----------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request_timeout)

    async def _get_json(self, url: str) -> Any:
        text = await self._get_text(url)
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise SourceUnavailable(f"{url} answered something that is not JSON: {exc}") from exc

    def _metrics_source(
        self, address: str, base: str, meta: Any
    ) -> tuple[str, Mapping[str, str] | None]:
        """Where an instance serves Prometheus text: ``/metrics`` on its own port, unless
        its registration's Meta names a ``metrics_port`` (a gateway keeps metrics on its
        admin listener). The chaos token is sent only to an instance whose Meta asks for
        it (``metrics_auth: bearer``), never to every registered address."""
        meta = meta if isinstance(meta, Mapping) else {}
        port = str(meta.get("metrics_port") or "")
        url = f"http://{address}:{port}/metrics" if port.isdigit() else base + "/metrics"
        if meta.get("metrics_auth") == "bearer" and self.chaos_token is not None:
            return url, {"Authorization": f"Bearer {self.chaos_token}"}
        return url, None

    async def _get_text(self, url: str, headers: Mapping[str, str] | None = None) -> str:
        try:
            async with self._client().get(
                url, headers=headers, timeout=self._timeout()
            ) as response:
                text = await response.text()
                status = response.status
        except _ERRORS as exc:
            raise SourceUnavailable(f"{url}: {exc or type(exc).__name__}") from exc
        if status != 200:
            raise SourceUnavailable(f"{url} answered {status}: {text[:200]}")
        return text


def _upstream(sample: InstanceSample) -> dict[str, dict[str, int]]:
    upstream: dict[str, dict[str, int]] = {}
    for (target, status), count in sorted(sample.upstream.items()):
        upstream.setdefault(target, {})[status] = count
    return upstream


def _status_name(severity: int) -> str:
    return ("passing", "warning", "critical")[severity]


def _flows(services: Sequence[ServiceView], sagas: SagasView | None) -> list[FlowView]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for service in services:
        for instance in service.instances:
            for target, by_status in instance.upstream.items():
                edge = counts.setdefault((service.name, target), {})
                for status, count in by_status.items():
                    edge[status] = edge.get(status, 0) + count
    if sagas is not None:
        for saga in sagas.recent:
            for entry in saga.timeline:
                kind, step = entry.get("kind"), entry.get("step")
                if kind in _FLOW_KINDS and step:
                    edge = counts.setdefault((f"saga:{saga.name}", str(step)), {})
                    edge[str(kind)] = edge.get(str(kind), 0) + 1
    return [FlowView(source, target, edge) for (source, target), edge in counts.items()]
