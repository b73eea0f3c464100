"""``shipyard up`` starts the reference shop, prints a ready line, and stops cleanly on
SIGTERM, leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from examples.shop.settings import DEMO_CHAOS_TOKEN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shop_processes(var: Path) -> list[int]:
    """Pids of live processes started for the shop in ``var`` (found by environment)."""
    marker = f"SHOP_VAR={var}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_up_serves_the_shop_until_sigterm_and_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shipyard.cli",
            "up",
            "--registry-port",
            str(port),
            "--gateway-port",
            "0",
            "--base-port",
            "0",
            "--control-port",
            "0",
            "--dashboard-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    var = (tmp_path / "var").resolve()
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "ready" in line:
                break
        assert any(f"127.0.0.1:{port}" in line for line in lines), lines
        assert "shipyard up: ready" in lines[-1], lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/catalog/services") as reply:
            services = set(json.load(reply))
        assert {"users", "products", "inventory", "orders", "payments", "legacy"} <= services
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/v1/health/service/inventory?passing"
        ) as reply:
            assert len(json.load(reply)) == 2
        assert len(shop_processes(var)) == 11  # 10 service instances and the gateway
        control = next(line.split()[1] for line in lines if line.startswith("control"))
        request = urllib.request.Request(
            control, headers={"Authorization": f"Bearer {DEMO_CHAOS_TOKEN}"}
        )
        with urllib.request.urlopen(request) as reply:
            instances = json.load(reply)["instances"]
        assert all(instance["running"] for instance in instances)
        board = next(line.split()[1] for line in lines if line.startswith("dashboard"))
        with urllib.request.urlopen(board) as reply:
            assert reply.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert (tmp_path / "var" / "registry.db").exists()
        assert shop_processes(var) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
