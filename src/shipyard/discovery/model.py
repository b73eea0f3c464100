"""What discovery talks about: a service ``Instance`` and the ``Registration`` that creates one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from shipyard.core import validation
from shipyard.core.errors import ConfigError

Status = Literal["passing", "warning", "critical"]
"""Health of an instance, in Consul's vocabulary."""

PASSING: Final = "passing"
WARNING: Final = "warning"
CRITICAL: Final = "critical"


@dataclass(frozen=True, slots=True)
class Instance:
    """One running copy of a service, as a registry reports it."""

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    status: Status = PASSING

    @property
    def healthy(self) -> bool:
        """True when every check passes (what ``passing_only`` lookups return)."""
        return self.status == PASSING

    @property
    def url(self) -> str:
        """``http://address:port`` — the base URL to call the instance on."""
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Registration:
    """What a service tells the registry about itself when it starts.

    Health comes from ``ttl`` (the service heartbeats; see ``SelfRegistration``) or from
    ``http_check`` (the registry polls that URL every ``interval``); a check that stays
    critical for ``deregister_after`` seconds removes the instance altogether.
    """

    name: str
    id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    ttl: float | None = None
    http_check: str | None = None
    interval: float = 10.0
    deregister_after: float | None = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", self.name, "must be a non-empty service name")
        if not self.id:
            raise ConfigError("id", self.id, "must be a non-empty instance id")
        if not 0 < self.port < 65536:
            raise ConfigError("port", self.port, "must be a TCP port in 1..65535")
        validation.optional_positive("ttl", self.ttl)
        validation.positive("interval", self.interval)
        validation.optional_positive("deregister_after", self.deregister_after)
        if self.ttl is not None and self.http_check is not None:
            raise ConfigError(
                "http_check", self.http_check, "set either ttl or http_check, not both"
            )

    def instance(self, status: Status = PASSING) -> Instance:
        """The ``Instance`` this registration describes."""
        return Instance(
            id=self.id,
            service=self.name,
            address=self.address,
            port=self.port,
            tags=self.tags,
            meta=dict(self.meta),
            status=status,
        )


def parse_host_port(text: str, *, field_name: str) -> tuple[str, int]:
    """Split ``"host:port"``; raise ``ConfigError`` naming ``field_name`` when malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(field_name, text, "must look like host:port, e.g. 127.0.0.1:8001")
    return host.strip("[]"), int(port)
