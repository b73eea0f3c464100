"""Load balancers: pick one instance out of a list. Pure, with the random source injected.

Instances are keyed by ``Instance.id``, so a balancer keeps its state when the registry
hands out a fresh list (for instance after a health change) with the same instances.
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from shipyard.discovery.errors import NoHealthyInstance
from shipyard.discovery.model import Instance


@runtime_checkable
class Balancer(Protocol):
    """Chooses the instance for the next call."""

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """One of ``instances``; raises ``NoHealthyInstance`` when the list is empty."""


class RoundRobin:
    """Each instance in turn."""

    __slots__ = ("_next",)

    def __init__(self, *, start: int = 0) -> None:
        self._next = start

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """The instance after the one picked last time (wrapping around)."""
        if not instances:
            raise NoHealthyInstance()
        index = self._next % len(instances)
        self._next = index + 1
        return instances[index]


class Random:
    """A uniformly random instance."""

    __slots__ = ("_rng",)

    def __init__(self, *, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """A random instance."""
        if not instances:
            raise NoHealthyInstance()
        return instances[self._rng.randrange(len(instances))]


class _OutstandingCounter:
    """In-flight calls per instance id; ``track``/``acquire``/``release`` keep it up to date."""

    __slots__ = ("_in_flight",)

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def outstanding(self, instance: Instance) -> int:
        """Calls to ``instance`` started and not yet finished."""
        return self._in_flight.get(instance.id, 0)

    def acquire(self, instance: Instance) -> None:
        """Count a call to ``instance`` as started (pair with ``release``)."""
        self._in_flight[instance.id] = self._in_flight.get(instance.id, 0) + 1

    def release(self, instance: Instance) -> None:
        """Count a call to ``instance`` as finished."""
        left = self._in_flight.get(instance.id, 0) - 1
        if left > 0:
            self._in_flight[instance.id] = left
        else:
            # Dropping zeros keeps the map from growing with every instance ever seen.
            self._in_flight.pop(instance.id, None)

    @contextmanager
    def track(self, instance: Instance) -> Iterator[Instance]:
        """``with balancer.track(instance):`` counts the call while the block runs."""
        self.acquire(instance)
        try:
            yield instance
        finally:
            self.release(instance)


class LeastOutstanding(_OutstandingCounter):
    """The instance with the fewest calls in flight (ties go to the earliest in the list).

    Only calls made through ``track`` (or ``acquire``/``release``) are counted.
    """

    __slots__ = ()

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """The least busy instance."""
        if not instances:
            raise NoHealthyInstance()
        in_flight = self._in_flight
        best = instances[0]
        best_load = in_flight.get(best.id, 0)
        for instance in instances:
            load = in_flight.get(instance.id, 0)
            if load < best_load:
                best, best_load = instance, load
        return best


class PowerOfTwoChoices(_OutstandingCounter):
    """Two random instances; the one with fewer calls in flight wins.

    Nearly as even as least-outstanding, without every client herding onto the same
    "least busy" instance at once.
    """

    __slots__ = ("_rng",)

    def __init__(self, *, rng: _random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng or _random.Random()

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """The less busy of two distinct random instances."""
        count = len(instances)
        if count == 0:
            raise NoHealthyInstance()
        if count == 1:
            return instances[0]
        first = self._rng.randrange(count)
        # Draw the second from the other count-1 slots so the two are always distinct.
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = instances[first], instances[second]
        return b if self.outstanding(b) < self.outstanding(a) else a
