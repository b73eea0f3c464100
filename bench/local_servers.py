"""Local servers for the benchmarks: free ports, waiting for a listener, CPU pinning and
nginx configurations (an upstream or a reverse proxy), shared by the modules that start them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(
    port: int,
    timeout: float = 15.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    what: str = "a server",
) -> None:
    """Wait until ``port`` accepts connections; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            if process is not None:
                process.kill()
            raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}")
        time.sleep(0.02)


def taskset(core: str, command: list[str]) -> list[str]:
    """``command`` pinned to ``core`` (e.g. ``"0"`` or ``"0,1"``) where taskset exists."""
    return ["taskset", "-c", core, *command] if shutil.which("taskset") else command


def nginx_conf(tmp: Path, body: str) -> Path:
    """A one-worker, foreground nginx configuration in ``tmp`` with ``body`` (upstreams and
    servers) inside ``http``; no access log, keep-alive as long as a benchmark runs."""
    conf = tmp / f"nginx-{len(list(tmp.iterdir()))}.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx-{conf.stem}.pid;
error_log {tmp}/error-{conf.stem}.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  {body}
}}
"""
    )
    return conf
