"""The registry's pure core: instances, their checks, health, the index and change waiters.

No I/O happens here. Time comes from the injected clock (TTL expiry and
"deregister critical instance after" are clock timers), HTTP/TCP probes live in
``checks.py`` and report through :meth:`Catalog.set_check_status`, and persistence in
``snapshot.py`` listens to :attr:`Catalog.events`.

Every change bumps one raft-like ``index`` (monotonic, never reused, restored from the
snapshot) and records it per service name, so a blocking query on one service sleeps
through changes to the others.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from shipyard.core import SYSTEM_CLOCK, Clock, EventPublisher, TimerHandle, get_logger
from shipyard.core.errors import ShipyardError

_log = get_logger("shipyard.discovery.registry")


class Status(enum.StrEnum):
    """A check's (and an instance's aggregated) health, in Consul's words."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


# The aggregated status of an instance is its worst check.
_SEVERITY = {Status.PASSING: 0, Status.WARNING: 1, Status.CRITICAL: 2}


class CheckKind(enum.StrEnum):
    """How a check learns its status."""

    HTTP = "http"
    TCP = "tcp"
    TTL = "ttl"
    ATTACH = "attach"
    """A Shipyard live connection (``/v1/shipyard/attach/{id}``), see ``api.py``."""


class UnknownServiceError(ShipyardError, KeyError):
    """No instance is registered under this service id."""

    def __init__(self, service_id: str) -> None:
        self.service_id = service_id
        super().__init__(f"unknown service id {service_id!r}: register it first")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownCheckError(ShipyardError, KeyError):
    """No check is registered under this check id."""

    def __init__(self, check_id: str) -> None:
        self.check_id = check_id
        super().__init__(f"unknown check id {check_id!r}: list ids with GET /v1/agent/checks")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """What a check is, as registered (durations in seconds)."""

    check_id: str
    name: str
    kind: CheckKind
    target: str = ""
    """The URL (HTTP) or ``host:port`` (TCP); empty for TTL and attach checks."""
    interval: float = 0.0
    timeout: float = 10.0
    ttl: float = 0.0
    deregister_after: float | None = None
    initial_status: Status = Status.CRITICAL
    notes: str = ""
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """One instance of a service, as registered."""

    service_id: str
    name: str
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    checks: tuple[CheckDefinition, ...] = ()


@dataclass(slots=True)
class CheckState:
    """A check's live status."""

    definition: CheckDefinition
    service_id: str
    status: Status
    output: str = ""
    create_index: int = 0
    modify_index: int = 0
    _ttl_timer: TimerHandle | None = field(default=None, repr=False)
    _deregister_timer: TimerHandle | None = field(default=None, repr=False)

    def cancel_timers(self) -> None:
        """Stop this check's TTL and deregister timers."""
        for timer in (self._ttl_timer, self._deregister_timer):
            if timer is not None:
                timer.cancel()
        self._ttl_timer = self._deregister_timer = None


@dataclass(slots=True)
class Instance:
    """A registered instance and its checks' live states."""

    service: ServiceDefinition
    checks: dict[str, CheckState]
    create_index: int
    modify_index: int

    @property
    def status(self) -> Status:
        """The worst status among the checks (passing when there are none)."""
        worst = Status.PASSING
        for check in self.checks.values():
            if _SEVERITY[check.status] > _SEVERITY[worst]:
                worst = check.status
        return worst


@dataclass(frozen=True, slots=True)
class RestoredInstance:
    """An instance as a snapshot remembers it."""

    service: ServiceDefinition
    statuses: dict[str, Status]
    attached: bool = False
    """True when the instance had a live-connection check (it comes back critical)."""
    attach_deregister_after: float | None = None


@dataclass(frozen=True, slots=True)
class CatalogChanged:
    """Emitted after every change; ``service_name`` is the service the change touched."""

    index: int
    service_name: str
    what: str


def attach_check_id(service_id: str) -> str:
    """The CheckID of a service's live-connection check."""
    return f"attach:{service_id}"


def _attach_definition(service_id: str, deregister_after: float | None) -> CheckDefinition:
    return CheckDefinition(
        check_id=attach_check_id(service_id),
        name="Shipyard live connection",
        kind=CheckKind.ATTACH,
        deregister_after=deregister_after,
    )


class Catalog:
    """Instances by service id, checks by check id, and the change index."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._instances: dict[str, Instance] = {}
        self._checks: dict[str, CheckState] = {}
        self._index = 1
        # Last index at which each service name changed; kept after the last instance
        # leaves so a watcher of that name still sees the deregistration.
        self._name_index: dict[str, int] = {}
        self._attached: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._closed = False
        self._waiting = 0
        self.events: EventPublisher[CatalogChanged] = EventPublisher("registry.catalog")
        """Every change, after it is applied (the snapshot writer and probe runner listen)."""

    # --- reading -------------------------------------------------------------------------

    @property
    def index(self) -> int:
        """The raft-like index: bumped on every change, never reused."""
        return self._index

    def name_index(self, name: str) -> int:
        """The index of the last change to service ``name`` (at least 1)."""
        return max(self._name_index.get(name, 1), 1)

    def instances(self) -> list[Instance]:
        """Every instance, in registration order."""
        return list(self._instances.values())

    def instance(self, service_id: str) -> Instance:
        """The instance registered as ``service_id``."""
        try:
            return self._instances[service_id]
        except KeyError:
            raise UnknownServiceError(service_id) from None

    def instances_of(self, name: str) -> list[Instance]:
        """The instances of service ``name``."""
        return [i for i in self._instances.values() if i.service.name == name]

    def checks(self) -> list[CheckState]:
        """Every check, in registration order."""
        return list(self._checks.values())

    def check(self, check_id: str) -> CheckState:
        """The check registered as ``check_id``."""
        try:
            return self._checks[check_id]
        except KeyError:
            raise UnknownCheckError(check_id) from None

    def service_tags(self) -> dict[str, list[str]]:
        """Every service name with the union of its instances' tags."""
        tags: dict[str, list[str]] = {}
        for instance in self._instances.values():
            known = tags.setdefault(instance.service.name, [])
            known.extend(t for t in instance.service.tags if t not in known)
        return tags

    # --- blocking queries ----------------------------------------------------------------

    async def wait_for_change(self, seen: int, wait: float, name: str | None = None) -> None:
        """Return once the index (of ``name``, or overall) exceeds ``seen``, or after ``wait``."""
        if self._relevant(name) > seen:
            return
        expired = asyncio.Event()
        timer = self._clock.call_later(wait, expired.set)
        self._waiting += 1
        try:
            while self._relevant(name) <= seen and not expired.is_set() and not self._closed:
                changed = asyncio.ensure_future(self._changed.wait())
                timed_out = asyncio.ensure_future(expired.wait())
                try:
                    await asyncio.wait({changed, timed_out}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    timed_out.cancel()
        finally:
            self._waiting -= 1
            timer.cancel()

    @property
    def waiting(self) -> int:
        """How many blocking queries are waiting for a change right now."""
        return self._waiting

    def _relevant(self, name: str | None) -> int:
        return self._index if name is None else self.name_index(name)

    # --- changing ------------------------------------------------------------------------

    def register(self, service: ServiceDefinition) -> None:
        """Add ``service``, replacing (with its checks) any instance of the same id."""
        old = self._instances.get(service.service_id)
        index = self._bump()
        create_index = index
        attach: CheckState | None = None
        if old is not None:
            create_index = old.create_index
            attach = old.checks.get(attach_check_id(service.service_id))
            self._drop(old, keep=attach)
            if old.service.name != service.name:
                self._name_index[old.service.name] = index
        for definition in service.checks:
            if definition.check_id in self._checks:
                # A check id belongs to one instance; registering it elsewhere moves it.
                self._remove_check(self._checks[definition.check_id], index)
        instance = Instance(service, {}, create_index, index)
        if attach is not None:
            instance.checks[attach.definition.check_id] = attach
        self._instances[service.service_id] = instance
        for definition in service.checks:
            state = CheckState(
                definition, service.service_id, definition.initial_status, "", index, index
            )
            instance.checks[definition.check_id] = state
            self._checks[definition.check_id] = state
            self._arm_timers(state)
        self._changed_now(index, service.name, f"registered {service.service_id}")

    def deregister(self, service_id: str) -> None:
        """Remove the instance ``service_id`` and its checks."""
        instance = self.instance(service_id)
        index = self._bump()
        self._drop(instance, keep=None)
        del self._instances[service_id]
        self._changed_now(index, instance.service.name, f"deregistered {service_id}")

    def set_check_status(self, check_id: str, status: Status, output: str = "") -> None:
        """Record a check result; a TTL check's timer restarts; the index moves on change."""
        state = self.check(check_id)
        if state.definition.kind is CheckKind.TTL:
            self._arm_ttl(state)
        self._set(state, status, output)

    def attach(self, service_id: str, deregister_after: float | None = None) -> str:
        """A live connection for ``service_id`` opened: its attach check passes."""
        instance = self.instance(service_id)
        self._attached[service_id] = self._attached.get(service_id, 0) + 1
        check_id = attach_check_id(service_id)
        state = instance.checks.get(check_id)
        if state is None or state.definition.deregister_after != deregister_after:
            index = self._bump()
            if state is not None:
                state.cancel_timers()
            state = CheckState(
                _attach_definition(service_id, deregister_after),
                service_id,
                Status.PASSING,
                "live connection open",
                index,
                index,
            )
            instance.checks[check_id] = state
            self._checks[check_id] = state
            instance.modify_index = index
            self._changed_now(index, instance.service.name, f"attached {service_id}")
        else:
            self._set(state, Status.PASSING, "live connection open")
        return check_id

    def detach(self, service_id: str) -> None:
        """A live connection for ``service_id`` closed: its attach check goes critical."""
        remaining = self._attached.get(service_id, 0) - 1
        if remaining > 0:
            self._attached[service_id] = remaining
            return
        self._attached.pop(service_id, None)
        state = self._checks.get(attach_check_id(service_id))
        if state is not None:
            self._set(state, Status.CRITICAL, "live connection closed")

    def restore(self, index: int, instances: Iterable[RestoredInstance]) -> None:
        """Load a snapshot: ``index`` and instances with their last known check statuses.

        Attach checks come back critical (no connection survives a restart) and TTL
        checks get a fresh TTL, so a client has one full TTL to report in again.
        """
        self._index = max(self._index, index)
        for restored in instances:
            service = restored.service
            self.register(service)
            instance = self._instances[service.service_id]
            for check_id, status in restored.statuses.items():
                if check_id in instance.checks:
                    self._set(instance.checks[check_id], status, "restored from snapshot")
            if restored.attached:
                self.attach(service.service_id, restored.attach_deregister_after)
                self.detach(service.service_id)

    def close(self) -> None:
        """Cancel every timer and release every blocking waiter (on shutdown).

        Waiters answer at once with the current state, so a server shutting down does not
        sit out minutes-long blocking queries.
        """
        self._closed = True
        self._changed.set()
        for state in self._checks.values():
            state.cancel_timers()

    def reopen(self) -> None:
        """Undo :meth:`close` (a restarted server), re-arming TTL and deregister timers."""
        self._closed = False
        self._changed = asyncio.Event()
        for state in self._checks.values():
            self._arm_timers(state)

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._instances

    # --- internals -----------------------------------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _changed_now(self, index: int, name: str, what: str) -> None:
        self._name_index[name] = index
        # Replacing the event wakes every waiter once; new waiters wait for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.events.has_listeners:
            self.events.emit(CatalogChanged(index, name, what))

    def _drop(self, instance: Instance, keep: CheckState | None) -> None:
        for state in instance.checks.values():
            if state is keep:
                continue
            state.cancel_timers()
            self._checks.pop(state.definition.check_id, None)

    def _remove_check(self, state: CheckState, index: int) -> None:
        state.cancel_timers()
        del self._checks[state.definition.check_id]
        owner = self._instances.get(state.service_id)
        if owner is not None:
            owner.checks.pop(state.definition.check_id, None)
            owner.modify_index = index
            self._name_index[owner.service.name] = index

    def _set(self, state: CheckState, status: Status, output: str) -> None:
        if state.status is status and state.output == output:
            return
        status_changed = state.status is not status
        state.status = status
        state.output = output
        index = self._bump()
        state.modify_index = index
        instance = self._instances.get(state.service_id)
        if status_changed:
            self._arm_deregister(state)
        if instance is not None:
            instance.modify_index = index
            name = instance.service.name
            self._changed_now(index, name, f"{state.definition.check_id} {status}")

    def _arm_timers(self, state: CheckState) -> None:
        if state.definition.kind is CheckKind.TTL:
            self._arm_ttl(state)
        self._arm_deregister(state)

    def _arm_ttl(self, state: CheckState) -> None:
        if state._ttl_timer is not None:
            state._ttl_timer.cancel()
            state._ttl_timer = None
        if self._closed:
            return
        check_id = state.definition.check_id

        def expire() -> None:
            if self._checks.get(check_id) is state:
                state._ttl_timer = None
                self._set(state, Status.CRITICAL, "TTL expired")

        state._ttl_timer = self._clock.call_later(state.definition.ttl, expire)

    def _arm_deregister(self, state: CheckState) -> None:
        if state._deregister_timer is not None:
            state._deregister_timer.cancel()
            state._deregister_timer = None
        after = state.definition.deregister_after
        if after is None or state.status is not Status.CRITICAL or self._closed:
            return

        def reap() -> None:
            state._deregister_timer = None
            if self._checks.get(state.definition.check_id) is not state:
                return
            if state.service_id in self._instances:
                _log.info(
                    "deregistering critical instance",
                    service_id=state.service_id,
                    check_id=state.definition.check_id,
                    after=after,
                )
                self.deregister(state.service_id)

        state._deregister_timer = self._clock.call_later(after, reap)


__all__ = [
    "Catalog",
    "CatalogChanged",
    "CheckDefinition",
    "CheckKind",
    "CheckState",
    "Instance",
    "ServiceDefinition",
    "Status",
    "UnknownCheckError",
    "UnknownServiceError",
    "attach_check_id",
    "RestoredInstance",
]
