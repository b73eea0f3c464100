"""Shared test fixtures: the rule for tests that need a real server, and throw-away
PostgreSQL databases.

In CI (``CI=true``) a missing server FAILS the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
"""The test server's standing database, for creating the throw-away ones."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_server(name: str, port: int) -> None:
    """Fail (in CI) or skip (locally) the calling test unless ``name`` listens on ``port``."""
    if port_open(port):
        return
    reason = f"{name} is not running on 127.0.0.1:{port}"
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it: .ci/run starts it)", pytrace=False)
    pytest.skip(f"{reason}; start it to run this test")


def require_binary(name: str, package: str) -> str:
    """Path of executable ``name``; fail (in CI) or skip (locally) when it is not installed."""
    import shutil

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path:
        return path
    reason = f"{name} is not installed (Debian package {package})"
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it: .ci/run installs it)", pytrace=False)
    pytest.skip(f"{reason}; install it to run this test")


@contextlib.asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """The URL of a throw-away PostgreSQL database (unique per run), dropped afterwards;
    fails (in CI) or skips (locally) the calling test when PostgreSQL is not running."""
    import asyncpg

    require_server("PostgreSQL", 5432)
    name = f"shipyard_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
