"""Errors raised by service discovery; each also subclasses the closest builtin."""

from __future__ import annotations

from shipyard.core.errors import ShipyardError


class DiscoveryError(ShipyardError):
    """Root of the errors service discovery raises."""


class ServiceNotFound(DiscoveryError, LookupError):
    """The registry knows no instance of ``service`` at all (healthy or not)."""

    def __init__(self, service: str, backend: str) -> None:
        self.service = service
        self.backend = backend
        super().__init__(
            f"service {service!r} is not registered in {backend}; check the service name "
            "and that its instances register with this registry"
        )


class NoHealthyInstance(DiscoveryError, LookupError):
    """There was no instance to pick: none registered as healthy, or all were ejected."""

    def __init__(self, service: str | None = None) -> None:
        self.service = service
        what = f"service {service!r}" if service else "the service"
        super().__init__(
            f"no healthy instance of {what} to call; wait for instances to pass their "
            "checks or add capacity"
        )


class DiscoveryUnavailable(DiscoveryError, ConnectionError):
    """The registry could not be reached (or answered with an error)."""

    def __init__(self, backend: str, detail: str) -> None:
        self.backend = backend
        self.detail = detail
        super().__init__(f"service registry {backend} is unavailable: {detail}; is it running?")


class RegistrationNotSupported(DiscoveryError, NotImplementedError):
    """The backend is read-only (e.g. Kubernetes DNS): instances cannot register through it."""

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        super().__init__(f"cannot register or deregister through {backend}: {reason}")
