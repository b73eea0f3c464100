"""Liveness, readiness and startup probes with dependency checks, served as raw ASGI.

probes = Probes()
probes.add_readiness("postgres", postgres_check("postgresql://..."))
probes.add_readiness("recommendations", http_check("http://..."), critical=False)
probes.add_liveness("event-loop", event_loop_lag_check(0.5))
app = Starlette(routes=[Mount("/health", app=probes.asgi_app())])
"""

from shipyard.health.asgi import HealthApp
from shipyard.health.checks import (
    DiskSpaceCheck,
    EventLoopLagCheck,
    HttpCheck,
    NatsCheck,
    PostgresCheck,
    RedisCheck,
    SqliteCheck,
    disk_space_check,
    event_loop_lag_check,
    http_check,
    nats_check,
    postgres_check,
    redis_check,
    sqlite_check,
)
from shipyard.health.errors import CheckFailedError, HealthError
from shipyard.health.probes import Check, ProbeKind, Probes
from shipyard.health.redaction import redact
from shipyard.health.report import CheckResult, HealthReport, Status

__all__ = [
    # probes
    "Probes",
    "Check",
    "ProbeKind",
    "HealthApp",
    # reports
    "HealthReport",
    "CheckResult",
    "Status",
    # ready-made checks
    "sqlite_check",
    "postgres_check",
    "redis_check",
    "nats_check",
    "http_check",
    "disk_space_check",
    "event_loop_lag_check",
    "SqliteCheck",
    "PostgresCheck",
    "RedisCheck",
    "NatsCheck",
    "HttpCheck",
    "DiskSpaceCheck",
    "EventLoopLagCheck",
    # errors
    "HealthError",
    "CheckFailedError",
    # message scrubbing
    "redact",
]
