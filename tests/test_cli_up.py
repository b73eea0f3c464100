"""``shipyard up`` starts what exists, prints a ready line, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_up_serves_the_registry_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "up", "--registry-port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "ready" in line:
                break
        assert any(f"127.0.0.1:{port}" in line for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/catalog/services") as reply:
            assert json.load(reply) == {}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert (tmp_path / "var" / "registry.db").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
