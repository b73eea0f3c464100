"""Conventions every Shipyard package shares: errors, config checks, clock, events, logging,
background tasks."""

from shipyard.core import validation
from shipyard.core.background import BackgroundRunner, cancel_and_wait
from shipyard.core.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock, TimerHandle
from shipyard.core.errors import ConfigError, ShipyardError
from shipyard.core.events import EventPublisher, Listener
from shipyard.core.logging import configure_logging, get_logger

__all__ = [
    # errors
    "ShipyardError",
    "ConfigError",
    # time
    "Clock",
    "SystemClock",
    "ManualClock",
    "TimerHandle",
    "SYSTEM_CLOCK",
    # events
    "EventPublisher",
    "Listener",
    # background tasks
    "BackgroundRunner",
    "cancel_and_wait",
    # logging
    "configure_logging",
    "get_logger",
    # construction-time checks
    "validation",
]
