"""The npm ``consul`` client (2.x, unmodified) works against the registry, as py-consul does.

It sends capitalised and lower-case keys alike (``name``/``Name``, ``check``/``Check``) and
``passing=true``; ``make test`` installs it with ``npm ci`` under tests/…/npm.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shipyard.discovery.registry import RegistryServer
from tests.conftest import IN_CI, require_binary

NPM_DIR = Path(__file__).parent / "npm"


def require_npm_client() -> str:
    node = require_binary("node", "nodejs")
    if not (NPM_DIR / "node_modules" / "consul").is_dir():
        reason = f"the npm consul client is not installed (npm ci --prefix {NPM_DIR})"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return node


async def test_npm_consul_client_registers_queries_and_deregisters(
    server: RegistryServer,
) -> None:
    node = require_npm_client()
    process = await asyncio.create_subprocess_exec(
        node,
        str(NPM_DIR / "consul_client.mjs"),
        "127.0.0.1",
        str(server.port),
        "npm-web-2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    assert seen["services"] == ["npm-web-1", "npm-web-2"]
    # A TTL check starts critical until its first pass, unless registered as passing.
    assert seen["passingBefore"] == ["npm-web-1"]
    assert seen["passingAfter"] == ["npm-web-1", "npm-web-2"]
    assert seen["catalog"] == [9001, 9002]
    assert seen["tags"] == ["npm", "v2"]
    assert seen["leader"] == f"127.0.0.1:{server.port}"
    assert seen["afterDeregister"] == ["npm-web-2"]
