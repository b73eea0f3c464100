"""Fixtures for the registry tests: a running server and a py-consul client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import consul
import pytest

from shipyard.discovery.registry import RegistryServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RegistryServer]:
    """A registry on a free port, snapshotting into the test's temp dir."""
    async with RegistryServer(port=0, data_path=str(tmp_path / "registry.db")) as running:
        yield running


@pytest.fixture
def client(server: RegistryServer) -> consul.Consul:
    """The real py-consul client, pointed at ``server``."""
    return consul.Consul(host="127.0.0.1", port=server.port)
