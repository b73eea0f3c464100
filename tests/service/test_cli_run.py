"""``shipyard run module:service`` in a subprocess: serves, answers probes, stops on SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.service.serving import free_port

SERVICE_MODULE = """
from starlette.applications import Starlette
from shipyard.service import Service

service = Service("demo", Starlette(), request_log=False)
"""


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    (tmp_path / "demo_service.py").write_text(SERVICE_MODULE)
    return subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "run", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_live(port: int, process: subprocess.Popen[bytes]) -> int:
    """Poll /health/live until it answers (or the process dies, or 20 s pass)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1) as reply:
                status: int = reply.status
                return status
        except (urllib.error.URLError, ConnectionError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.01)  # the pause, and it notices an early exit
    _, stderr = process.communicate(timeout=5)
    raise AssertionError(f"service never answered: {stderr.decode()}")


def test_run_serves_the_named_service_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = start(tmp_path, "demo_service:service", "--port", str(port))
    try:
        assert wait_until_live(port, process) == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"service stopped" in stderr


def test_run_refuses_a_target_that_is_not_a_service(tmp_path: Path) -> None:
    process = start(tmp_path, "demo_service:Starlette")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert b"must name a shipyard.service.Service" in stderr
