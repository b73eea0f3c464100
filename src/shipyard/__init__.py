"""Shipyard: microservice patterns ready to use, and a reference system that runs them all."""

from shipyard.core import (
    SYSTEM_CLOCK,
    Clock,
    ConfigError,
    ManualClock,
    ShipyardError,
    SystemClock,
    configure_logging,
)

__version__ = "0.1.0"

__all__ = [
    "ShipyardError",
    "ConfigError",
    "Clock",
    "SystemClock",
    "ManualClock",
    "SYSTEM_CLOCK",
    "configure_logging",
    "__version__",
]
