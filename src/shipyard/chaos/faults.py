"""What to inject: :class:`Fault` rules (plain, validated data) and :class:`Chaos`, the
switch board the middleware reads and the admin endpoint changes at run time."""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, validation

Refuse = Literal["status", "close"]
_FIELDS = ("path_prefix", "latency", "latency_max", "error_rate", "error_status", "refuse")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule for requests whose path starts with ``path_prefix``.

    ``latency`` seconds are added before the app runs (a random value up to
    ``latency_max`` when that is set: a range); then ``error_rate`` of the requests (0-1)
    are answered with ``error_status`` instead of reaching the app. ``refuse`` turns all
    traffic away: ``"status"`` answers ``error_status``, ``"close"`` drops the connection
    mid-response, as a crashing instance would.
    """

    path_prefix: str = "/"
    latency: float = 0.0
    latency_max: float | None = None
    error_rate: float = 0.0
    error_status: int = 503
    refuse: Refuse | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path_prefix, str) or not self.path_prefix.startswith("/"):
            raise ConfigError("path_prefix", self.path_prefix, "must be a path starting with /")
        validation.non_negative("latency", self.latency)
        if self.latency_max is not None:
            validation.non_negative("latency_max", self.latency_max)
            if self.latency_max < self.latency:
                raise ConfigError(
                    "latency_max", self.latency_max, f"must be >= latency ({self.latency})"
                )
        rate = self.error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError("error_rate", rate, "must be a fraction in [0, 1], e.g. 0.1")
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError("error_status", status, "must be an HTTP error status, 400-599")
        validation.one_of("refuse", self.refuse, (None, "status", "close"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from JSON-like data; unknown keys are an error (a typo must not pass
        silently as "no fault")."""
        if not isinstance(data, Mapping):
            raise ConfigError("fault", data, "must be a JSON object")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError("fault", unknown, f"unknown keys; allowed: {', '.join(_FIELDS)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The fault as JSON-ready data (the inverse of :meth:`from_dict`)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @property
    def active(self) -> bool:
        """True when the rule changes anything."""
        return bool(self.latency or self.latency_max or self.error_rate or self.refuse)


class Chaos:
    """The faults in force. The longest matching ``path_prefix`` wins; with no faults the
    middleware costs one attribute check per request.

    ``random`` (returns floats in [0, 1)) and ``clock`` (sleeps) are injectable for tests.
    """

    __slots__ = ("_faults", "_rules", "clock", "enabled", "random")

    def __init__(
        self,
        faults: Iterable[Fault] = (),
        *,
        random: Callable[[], float] = _random.random,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.random = random
        self.clock = clock
        self._faults: tuple[Fault, ...] = ()
        self._rules: tuple[Fault, ...] = ()
        self.enabled = False
        """True while at least one active fault is set (the middleware's fast check)."""
        self.set(faults)

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The faults as set, in the order given."""
        return self._faults

    def set(self, faults: Iterable[Fault]) -> None:
        """Replace the faults (all at once: a request sees the old set or the new one)."""
        faults = tuple(faults)
        for fault in faults:
            if not isinstance(fault, Fault):
                raise ConfigError("faults", fault, "must be Fault instances")
        prefixes = [fault.path_prefix for fault in faults]
        if len(set(prefixes)) != len(prefixes):
            raise ConfigError("faults", prefixes, "must have one fault per path_prefix")
        rules = tuple(
            sorted((f for f in faults if f.active), key=lambda f: len(f.path_prefix), reverse=True)
        )
        self._faults = faults
        self._rules = rules
        self.enabled = bool(rules)

    def clear(self) -> None:
        """Remove every fault: traffic flows untouched."""
        self.set(())

    def match(self, path: str) -> Fault | None:
        """The fault that applies to ``path``, if any."""
        for rule in self._rules:
            if path.startswith(rule.path_prefix):
                return rule
        return None

    def latency_for(self, fault: Fault) -> float:
        """The delay to add for one request under ``fault``."""
        if fault.latency_max is None:
            return fault.latency
        return fault.latency + (fault.latency_max - fault.latency) * self.random()
