"""Structured logging setup: JSON lines in production, readable console output locally."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, json: bool = True, level: int | str = logging.INFO) -> None:
    """Configure ``structlog`` (and the stdlib root logger) for a Shipyard process.

    ``json=True`` writes one JSON object per line (what log shippers expect); ``False``
    renders coloured key=value lines for a developer's terminal.
    """
    numeric_level = logging.getLevelName(level) if isinstance(level, str) else level
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(message)s")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger named ``name`` (a module or component name)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
