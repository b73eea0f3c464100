"""Where a shop process finds everything: read from the environment the supervisor sets.

One frozen :class:`ShopSettings` per process. The supervisor builds it once, turns it into
environment variables (:meth:`ShopSettings.environment`) for every child, and each child
reads it back with :meth:`ShopSettings.from_environment` — so a service can also be run by
hand with the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from shipyard.core import ConfigError, validation

Flow = Literal["orchestrated", "choreographed"]
Profile = Literal["embedded", "distributed"]

FLOWS: tuple[Flow, ...] = ("orchestrated", "choreographed")
PROFILES: tuple[Profile, ...] = ("embedded", "distributed")

DEMO_JWT_SECRET = "shipyard-demo-secret-change-me"
DEMO_CHAOS_TOKEN = "shipyard-chaos-demo"

_PREFIX = "SHOP_"


@dataclass(frozen=True)
class ShopSettings:
    """Settings shared by every process of the shop.

    * ``var``: folder for the embedded databases and logs.
    * ``registry``: discovery URL (``consul://127.0.0.1:8500``).
    * ``bus``: event transport URL (``sqlite:///var/bus.db`` or ``nats://...``).
    * ``database``: database URL template with ``{service}`` (``sqlite:///var/{service}.db``
      or ``postgresql://postgres@127.0.0.1:5432/shop_{service}``).
    * ``flow``: how ``POST /orders`` places an order unless the request says otherwise.
    * ``instance``: this process's instance number (0 for the first instance).
    * ``consumer``: whether this instance consumes events (the supervisor runs every
      instance as a consumer; on the SQLite bus one of them holds each group's lease).
    * ``redis``: Redis URL for the gateway's shared counters and cache (distributed).
    * ``bus_stream``: the JetStream stream name when ``bus`` is NATS.
    """

    var: Path
    registry: str
    bus: str
    database: str
    flow: Flow = "orchestrated"
    profile: Profile = "embedded"
    jwt_secret: str = DEMO_JWT_SECRET
    chaos_token: str = DEMO_CHAOS_TOKEN
    instance: int = 0
    consumer: bool = True
    redis: str | None = None
    bus_stream: str = "shop"

    def __post_init__(self) -> None:
        validation.one_of("flow", self.flow, FLOWS)
        validation.one_of("profile", self.profile, PROFILES)
        validation.non_negative("instance", self.instance)
        if "{service}" not in self.database:
            raise ConfigError("database", self.database, "must contain {service}")

    @classmethod
    def embedded(cls, var: Path, registry: str, **options: object) -> ShopSettings:
        """SQLite databases and the SQLite event log under ``var``."""
        root = var.resolve()
        return cls(
            var=root,
            registry=registry,
            bus=f"sqlite:///{root}/bus.db",
            database=f"sqlite:///{root}/{{service}}.db",
            **options,  # type: ignore[arg-type]
        )

    def database_url(self, service: str) -> str:
        """The URL of ``service``'s own database."""
        return self.database.replace("{service}", service.replace("-", "_"))

    def for_instance(self, instance: int, *, consumer: bool) -> ShopSettings:
        """The same settings for instance number ``instance``."""
        return replace(self, instance=instance, consumer=consumer)

    def environment(self) -> dict[str, str]:
        """The variables a child process reads back with :meth:`from_environment`."""
        values = {
            "VAR": str(self.var),
            "REGISTRY": self.registry,
            "BUS": self.bus,
            "DATABASE": self.database,
            "FLOW": self.flow,
            "PROFILE": self.profile,
            "JWT_SECRET": self.jwt_secret,
            "CHAOS_TOKEN": self.chaos_token,
            "INSTANCE": str(self.instance),
            "CONSUMER": "1" if self.consumer else "0",
            "BUS_STREAM": self.bus_stream,
        }
        if self.redis:
            values["REDIS"] = self.redis
        return {_PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ShopSettings:
        """Settings from ``SHOP_*`` variables (what the supervisor sets)."""

        def get(key: str) -> str:
            try:
                return environ[_PREFIX + key]
            except KeyError:
                raise ConfigError(
                    _PREFIX + key, None, "must be set; start the shop with `shipyard up`"
                ) from None

        flow = environ.get(_PREFIX + "FLOW", "orchestrated")
        profile = environ.get(_PREFIX + "PROFILE", "embedded")
        validation.one_of("SHOP_FLOW", flow, FLOWS)
        validation.one_of("SHOP_PROFILE", profile, PROFILES)
        return cls(
            var=Path(get("VAR")),
            registry=get("REGISTRY"),
            bus=get("BUS"),
            database=get("DATABASE"),
            flow=flow,  # type: ignore[arg-type]
            profile=profile,  # type: ignore[arg-type]
            jwt_secret=environ.get(_PREFIX + "JWT_SECRET", DEMO_JWT_SECRET),
            chaos_token=environ.get(_PREFIX + "CHAOS_TOKEN", DEMO_CHAOS_TOKEN),
            instance=int(environ.get(_PREFIX + "INSTANCE", "0")),
            consumer=environ.get(_PREFIX + "CONSUMER", "1") == "1",
            redis=environ.get(_PREFIX + "REDIS") or None,
            bus_stream=environ.get(_PREFIX + "BUS_STREAM", "shop"),
        )
