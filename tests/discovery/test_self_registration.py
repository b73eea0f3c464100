"""``SelfRegistration``: register on start, heartbeat, deregister on shutdown — and a killed
process leaves rotation through the registry's live connection."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from shipyard.core import ManualClock
from shipyard.discovery import (
    ConsulBackend,
    Discovery,
    EtcdBackend,
    Registration,
    SelfRegistration,
    StaticBackend,
)
from shipyard.discovery.registry import RegistryServer
from tests.discovery.conftest import LIMIT, EtcdServer, eventually


def registration(*, ttl: float | None = None, number: int = 1) -> Registration:
    return Registration(
        name="users", id=f"users-{number}", address="127.0.0.1", port=8000 + number, ttl=ttl
    )


class HeartbeatCounter(StaticBackend):
    """A memory registry that also takes TTL heartbeats, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats: list[str] = []

    async def heartbeat(self, instance_id: str) -> None:
        self.heartbeats.append(instance_id)


async def ids(source: Discovery | ConsulBackend | EtcdBackend | StaticBackend) -> list[str]:
    backend = source.backend if isinstance(source, Discovery) else source
    return [i.id for i in await backend.instances("users")]


async def test_registers_on_entry_and_deregisters_on_exit() -> None:
    backend = StaticBackend()

    async with SelfRegistration(backend, registration()):
        assert await ids(backend) == ["users-1"]

    assert await ids(backend) == []


async def test_heartbeats_the_ttl_check_every_third_of_the_ttl() -> None:
    backend = HeartbeatCounter()
    clock = ManualClock(auto_advance=False)

    async with SelfRegistration(backend, registration(ttl=9.0), clock=clock):
        assert backend.heartbeats == ["users-1"]  # passing straight away, not after 3s
        for beats in (2, 3, 4):
            await eventually(lambda n=beats: len(clock.slept) == n - 1)  # type: ignore[misc]
            clock.advance(3.0)
            await eventually(lambda n=beats: len(backend.heartbeats) == n)  # type: ignore[misc]

    assert clock.slept[:3] == [3.0, 3.0, 3.0]


async def test_registration_through_the_registry_is_passing_at_once_and_gone_after_exit() -> None:
    async with RegistryServer() as server:
        backend = ConsulBackend("127.0.0.1", server.port, wait=1)
        async with SelfRegistration(backend, registration(ttl=30.0)):
            [instance] = await backend.instances("users")
            assert instance.healthy
        assert await backend.instances("users", passing_only=False) == []
        await backend.close()


async def test_attach_falls_back_to_ttl_only_where_the_registry_has_no_such_endpoint() -> None:
    async with RegistryServer() as server:
        backend = ConsulBackend("127.0.0.1", server.port)
        # Never attached and answered 404: treated as "no live connections here" (real Consul).
        await asyncio.wait_for(backend.hold_attachment("not-registered"), LIMIT)
        await backend.close()


async def test_sigterm_deregisters_and_requests_shutdown() -> None:
    backend = StaticBackend()
    self_registration = SelfRegistration(backend, registration(), handle_signals=True)
    await self_registration.start()

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(self_registration.shutdown_requested.wait(), LIMIT)
    await eventually(lambda: not self_registration.registered)

    assert await ids(backend) == []


async def test_etcd_registration_is_removed_on_exit(etcd_server: EtcdServer) -> None:
    backend = EtcdBackend.from_url(etcd_server.url + "/selfreg")
    async with SelfRegistration(backend, registration(ttl=5.0)):
        assert await ids(backend) == ["users-1"]
    assert await ids(backend) == []
    await backend.close()


async def test_etcd_key_vanishes_when_its_owner_stops_keeping_the_lease(
    etcd_server: EtcdServer,
) -> None:
    owner = EtcdBackend.from_url(etcd_server.url + "/lease")
    observer = EtcdBackend.from_url(etcd_server.url + "/lease")
    await owner.register(registration(ttl=1.0))
    watch = observer.watch("users")
    try:
        assert [i.id for i in await asyncio.wait_for(anext(watch), LIMIT)] == ["users-1"]

        await owner.close()  # like a dead process: no more keep-alives, no deregister

        assert await asyncio.wait_for(anext(watch), LIMIT) == []
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        await observer.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from shipyard.discovery import ConsulBackend, Registration, SelfRegistration

    async def main() -> None:
        backend = ConsulBackend("127.0.0.1", int(sys.argv[1]))
        registration = Registration(
            name="users", id="users-child", address="127.0.0.1", port=8100, ttl=60.0
        )
        async with SelfRegistration(backend, registration):
            print("registered", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_a_killed_process_leaves_rotation_without_waiting_for_its_ttl(
    registry_server: RegistryServer, tmp_path: Path
) -> None:
    registry = registry_server
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(registry.port), stdout=asyncio.subprocess.PIPE
    )
    backend = ConsulBackend("127.0.0.1", registry.port, wait=5)
    watch = backend.watch("users")
    try:
        assert child.stdout is not None
        async with asyncio.timeout(LIMIT):
            while await child.stdout.readline() != b"registered\n":
                pass  # skip the child's log lines
        # "registered" is printed inside the block: the live connection is confirmed.
        current = await asyncio.wait_for(anext(watch), LIMIT)
        assert [i.id for i in current] == ["users-child"]

        child.kill()  # no graceful deregister: only the dropped connection tells

        # The TTL is 60s, so anything within the limit is the live connection at work.
        assert await asyncio.wait_for(anext(watch), LIMIT) == []
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
        await watch.aclose()  # type: ignore[attr-defined]
        await backend.close()
