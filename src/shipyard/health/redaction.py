"""Scrubbing of check messages before they reach a probe response or a log line.

A failing dependency check usually fails with its driver's message, and drivers like to
quote what they were connecting to: ``postgresql://app:s3cret@db.internal:5432/orders``,
``password=s3cret host=10.0.0.7``, ``Connect call failed ('10.0.0.7', 6379)``. Probe
responses are read by load balancers, dashboards and sometimes the internet, so URLs, DSN
secrets and host addresses are replaced before any message leaves a check.
"""

from __future__ import annotations

import re

MAX_MESSAGE_LENGTH = 200
"""Longer messages are cut: a probe response is a status, not a stack trace."""

# Trailing punctuation is left alone: it belongs to the sentence, not the URL.
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://[^\s'\"<>]*[^\s'\"<>.,:;)]")
# libpq-style key=value DSNs and "password: x" in driver messages.
_SECRET_PAIR = re.compile(
    r"\b(password|passwd|pwd|pass|secret|token|api[_-]?key|auth)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)",
    re.IGNORECASE,
)
_HOST_PAIR = re.compile(r"\b(host|hostaddr|server|user)(\s*=\s*)(\S+)", re.IGNORECASE)
_CREDENTIALS = re.compile(r"[^\s'\"/@:]+:[^\s'\"/@]+@[^\s'\"]+")
# ('10.0.0.7', 6379) as asyncio's "Connect call failed" quotes it.
_ADDRESS_TUPLE = re.compile(r"\(\s*'[^']*'\s*,\s*\d+\s*(?:,\s*\d+\s*,\s*\d+\s*)?\)")
_IPV6 = re.compile(r"\[[0-9a-fA-F:.]+\](?::\d+)?")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_NAME_WITH_PORT = re.compile(r"\b[a-zA-Z][\w-]*(?:\.[\w-]+)*:\d{2,5}\b")


def redact(message: str) -> str:
    """``message`` with URLs, DSN secrets and host addresses replaced, on one short line."""
    text = " ".join(message.split())
    text = _URL.sub(lambda m: f"{m.group(1)}://<redacted>", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    text = _HOST_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    text = _CREDENTIALS.sub("<redacted>", text)
    text = _ADDRESS_TUPLE.sub("(<host>)", text)
    text = _IPV6.sub("<host>", text)
    text = _IPV4.sub("<host>", text)
    text = _NAME_WITH_PORT.sub("<host>", text)
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 1] + "…"
    return text


def describe_error(exc: BaseException) -> str:
    """A short, redacted description of why a check failed: ``Type: message``."""
    message = str(exc)
    name = type(exc).__name__
    return redact(f"{name}: {message}" if message else name)
