"""``shipyard registry`` runs the server until SIGTERM and keeps its snapshot."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import consul

from shipyard.cli import build_parser
from shipyard.discovery.registry import RegistryServer


def test_the_registry_command_defaults_to_consuls_port_and_a_var_snapshot() -> None:
    args = build_parser().parse_args(["registry"])
    assert (args.host, args.port, args.data) == ("127.0.0.1", 8500, "var/registry.db")


async def test_the_command_serves_until_sigterm_and_leaves_a_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "registry.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from shipyard.cli import main; sys.exit(main())",
        "registry", "--port", "0", "--data", str(data),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        async with asyncio.timeout(20):
            while True:
                line = await process.stderr.readline()
                assert line, "the registry exited before it was ready"
                event = json.loads(line)
                if event["event"] == "registry ready":
                    break
        port = int(event["url"].rsplit(":", 1)[1])
        client = consul.Consul(host="127.0.0.1", port=port)
        await asyncio.to_thread(client.agent.service.register, "web", service_id="web-1")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    async with RegistryServer(data_path=str(data)) as restarted:
        assert [i.service.service_id for i in restarted.catalog.instances()] == ["web-1"]
