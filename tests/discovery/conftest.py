"""Real servers for the discovery adapters: an etcd and a dnsmasq started in temp dirs,
and Shipyard's embedded registry in process."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard.discovery.registry import RegistryServer
from tests.conftest import port_open, require_binary

LIMIT = 10.0
"""Seconds before a wait in these tests fails: a net against hanging, not a speed check."""


async def eventually(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``LIMIT`` seconds."""
    async with asyncio.timeout(LIMIT):
        # Polling is fine here: the conditions are test probes with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} did not start on port {port}")
        # Waiting on the process doubles as the pause: it also notices a start-up crash.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.02)


@dataclass
class EtcdServer:
    """A running etcd (``url`` is the Shipyard backend URL)."""

    binary: str
    data_dir: Path
    port: int
    peer_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}/test"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{self.peer_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, "etcd")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole session, killed at the end."""
    binary = require_binary("etcd", "etcd-server")
    server = EtcdServer(binary, tmp_path_factory.mktemp("etcd") / "data", free_port(), free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class DnsServer:
    """A running dnsmasq; ``set_address`` rewrites a host record and reloads it (SIGHUP)."""

    process: subprocess.Popen[bytes]
    port: int
    hosts_file: Path

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_hosts(self, records: dict[str, str]) -> None:
        self.hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in records.items()))
        # dnsmasq re-reads --addn-hosts files on SIGHUP (but not --srv-host lines).
        self.process.send_signal(signal.SIGHUP)


SHOP = "user-service.shop.svc.cluster.local"
DNS_HOSTS = {f"user-0.{SHOP}": "127.0.0.1", f"user-1.{SHOP}": "127.0.0.2"}


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """dnsmasq publishing a headless Service ``user-service`` in namespace ``shop``."""
    binary = require_binary("dnsmasq", "dnsmasq-base")
    directory = tmp_path_factory.mktemp("dnsmasq")
    hosts = directory / "pods"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in DNS_HOSTS.items()))
    config = directory / "dnsmasq.conf"
    config.write_text(
        f"srv-host=_http._tcp.{SHOP},user-0.{SHOP},8001\n"
        f"srv-host=_http._tcp.{SHOP},user-1.{SHOP},8002\n"
        f"addn-hosts={hosts}\n"
        # Authoritative for cluster.local, like CoreDNS: unknown names are NXDOMAIN.
        "local=/cluster.local/\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--no-daemon",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={config}",
            f"--pid-file={directory / 'pid'}",
            # Stay the current user, so the hosts file in our temp dir stays readable.
            f"--user={getpass.getuser()}",
            "--log-facility=-",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _udp_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"dnsmasq did not start on port {port}")
        # Waiting on the process doubles as the pause: it also notices a start-up crash.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.02)
    yield DnsServer(process, port, hosts)
    process.kill()
    process.wait()


def _udp_answers(port: int) -> bool:
    import dns.message
    import dns.query

    try:
        dns.query.udp(dns.message.make_query(f"user-0.{SHOP}", "A"), "127.0.0.1", 0.2, port)
    except Exception:
        return False
    return True


@pytest.fixture
async def registry_server() -> AsyncIterator[RegistryServer]:
    """Shipyard's embedded registry on a free port."""
    async with RegistryServer("127.0.0.1", 0) as server:
        yield server
