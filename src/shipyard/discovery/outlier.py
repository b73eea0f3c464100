"""Passive outlier ejection: take an instance out of rotation after it fails calls, without
waiting for the registry's next health check (Envoy's outlier detection, simplified).

``consecutive_failures`` failed calls in a row — or a single refused connection — eject the
instance for ``base_ejection * k`` seconds, where ``k`` counts its recent ejections (capped at
``max_ejection``), so an instance that keeps failing stays out longer each time. ``k`` drops by
one for every ``base_ejection`` seconds the instance then stays in rotation.

Two safety valves keep ejection from making an outage worse:

* at most ``max_ejection_percent`` of the instances it has seen calls to are ejected at
  once (but one instance can always be ejected), and
* ``filter`` never returns nothing: if every instance it is given is ejected, it returns them
  all, because calling a suspect instance beats failing every call locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.events import EventPublisher
from shipyard.discovery.model import Instance


@dataclass(frozen=True, slots=True)
class InstanceEjected:
    """An instance was taken out of rotation until ``until`` (monotonic seconds)."""

    instance_id: str
    service: str
    until: float
    ejections: int
    reason: str


class _Record:
    __slots__ = ("ejections", "failures", "returned_at")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.returned_at = 0.0


class OutlierDetector:
    """Counts call outcomes per instance and filters ejected instances out of lists."""

    def __init__(
        self,
        *,
        consecutive_failures: int = 5,
        base_ejection: float = 30.0,
        max_ejection: float = 300.0,
        max_ejection_percent: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.consecutive_failures = validation.at_least(
            "consecutive_failures", consecutive_failures, 1
        )
        self.base_ejection = validation.positive("base_ejection", base_ejection)
        self.max_ejection = validation.positive("max_ejection", max_ejection)
        self.max_ejection_percent = validation.fraction(
            "max_ejection_percent", max_ejection_percent
        )
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._ejected: dict[str, float] = {}  # id -> until; only the currently ejected
        self.events: EventPublisher[InstanceEjected] = EventPublisher("outlier")

    def record_success(self, instance: Instance) -> None:
        """A call to ``instance`` succeeded: its failure streak starts over."""
        record = self._records.get(instance.id)
        if record is None:
            # Knowing every instance called, not only the failing ones, sizes the
            # max_ejection_percent cap.
            self._records[instance.id] = _Record()
        else:
            record.failures = 0

    def record_failure(self, instance: Instance, *, connection_refused: bool = False) -> None:
        """A call to ``instance`` failed; eject it once the streak (or a refusal) says so."""
        record = self._records.get(instance.id)
        if record is None:
            record = self._records[instance.id] = _Record()
        now = self._clock.monotonic()
        if self._is_ejected(instance.id, now):
            return  # calls still in flight when it was ejected say nothing new
        record.failures += 1
        if connection_refused:
            self._eject(instance, record, now, "connection refused")
        elif record.failures >= self.consecutive_failures:
            self._eject(instance, record, now, f"{record.failures} consecutive failures")

    def is_ejected(self, instance: Instance) -> bool:
        """True while ``instance`` is out of rotation."""
        return self._is_ejected(instance.id, self._clock.monotonic())

    def filter(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        """``instances`` without the ejected ones — or all of them if every one is ejected."""
        if not self._ejected:
            return instances
        now = self._clock.monotonic()
        kept = [i for i in instances if not self._is_ejected(i.id, now)]
        return kept or instances

    def _is_ejected(self, instance_id: str, now: float) -> bool:
        until = self._ejected.get(instance_id)
        if until is None:
            return False
        if now < until:
            return True
        # The cool-down is over: back in rotation with a clean streak.
        del self._ejected[instance_id]
        record = self._records[instance_id]
        record.failures = 0
        record.returned_at = until
        return False

    def _eject(self, instance: Instance, record: _Record, now: float, reason: str) -> None:
        for instance_id in list(self._ejected):
            self._is_ejected(instance_id, now)  # expire finished cool-downs first
        allowed = max(1, int(self.max_ejection_percent * len(self._records)))
        if len(self._ejected) >= allowed:
            return
        if record.ejections:
            # Forgive one past ejection per base_ejection spent healthy since the last one.
            healthy_for = max(0.0, now - record.returned_at)
            record.ejections = max(0, record.ejections - int(healthy_for // self.base_ejection))
        record.ejections += 1
        until = now + min(self.base_ejection * record.ejections, self.max_ejection)
        self._ejected[instance.id] = until
        if self.events.has_listeners:
            self.events.emit(
                InstanceEjected(instance.id, instance.service, until, record.ejections, reason)
            )
