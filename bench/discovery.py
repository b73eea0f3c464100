"""Discovery: failover time, warm-cache lookup cost and registry query throughput, one run.

1. Failover: child processes register themselves with ``SelfRegistration`` (default
   settings) and are SIGKILLed one by one; we time from the kill until a watching
   ``Discovery`` in this process stops returning the instance, for
   (a) the embedded registry (``consul://`` backend) with its live connection,
   (b) etcd with the smallest lease TTL it grants,
   (c) the embedded registry on its TTL check alone (``attach=False``).
2. Warm-cache lookup: ns per ``await discovery.instances(name)``, interleaved with a plain
   ``dict.get``; then what a naive client pays instead: a py-consul ``health.service``
   round trip per lookup.
3. Registry throughput: wrk on ``GET /v1/health/service/<name>?passing=1`` across 10
   services x 100 instances, registry (a ``shipyard registry`` process) on core 0 and wrk
   on core 1.

Targets (issue 3): failover with the live connection < 1 s; warm lookup < 5 us.
Run alone with ``uv run python -m bench discovery`` (about a minute).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.local_servers import free_port, taskset, wait_port
from bench.timing import AsyncCase, print_overhead_table, time_async_cases, time_sync_cases

if TYPE_CHECKING:
    from shipyard.discovery import Discovery, Instance

LOOPS = int(os.environ.get("BENCH_LOOPS", "20000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
KILLS = int(os.environ.get("BENCH_KILLS", "5"))
"""Instances killed per failover row."""

TTL = 10.0
"""TTL of the registry rows' check: Registration has no default, so EtcdBackend's default."""
ETCD_TTL = 1.0
"""Requested etcd lease TTL; etcd raises it to its own minimum (printed)."""
SERVICES = 10
PER_SERVICE = 100
CONNECTIONS = 32
REGISTRY_CORE = "0"
LOAD_CORE = "1"
ROOT = Path(__file__).resolve().parents[1]
LIMIT = 30.0
"""Seconds a start-up or an expected disappearance may take before the row gives up."""


# --- processes ------------------------------------------------------------------------------


def start_registry(port: int) -> subprocess.Popen[bytes]:
    """``shipyard registry`` as its own process (no snapshot file), pinned to REGISTRY_CORE."""
    command = [
        sys.executable,
        "-c",
        "import sys; from shipyard.cli import main; sys.exit(main())",
        *("registry", "--port", str(port), "--data", ""),
    ]
    process = subprocess.Popen(
        taskset(REGISTRY_CORE, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, LIMIT, process=process, what="shipyard registry")
    return process


def start_etcd(binary: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    command = [binary, "--data-dir", str(data_dir), "--listen-client-urls", client]
    command += ["--advertise-client-urls", client, "--listen-peer-urls", peer]
    command += ["--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, LIMIT, process=process, what="etcd")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- 1. failover ----------------------------------------------------------------------------


async def child(url: str, service: str, instance_id: str, ttl: float, attach: bool) -> None:
    """The killed process: register with default settings, say ``ready``, wait to be killed."""
    from shipyard.core import configure_logging
    from shipyard.discovery import Registration, SelfRegistration

    configure_logging(level="WARNING")  # stdout carries only the ready line
    registration = Registration(
        name=service, id=instance_id, address="127.0.0.1", port=free_port(), ttl=ttl
    )
    async with SelfRegistration(url, registration, attach=attach):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def spawn_child(
    url: str, service: str, instance_id: str, ttl: float, attach: bool
) -> asyncio.subprocess.Process:
    mode = "attach" if attach else "no-attach"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.discovery", "child", url, service, instance_id),
        *(str(ttl), mode),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(LIMIT):
            line = await process.stdout.readline()
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        process.kill()
        await process.wait()
        errors = (await process.stderr.read()).decode(errors="replace")[-2000:]
        raise RuntimeError(f"child {instance_id} did not register with {url}:\n{errors}")
    return process


async def failover(url: str, service: str, *, ttl: float, attach: bool) -> list[float]:
    """Seconds from SIGKILL to absence from ``Discovery.instances``, one per killed child."""
    ids = [f"{service}-{n}" for n in range(KILLS)]
    started = await asyncio.gather(
        *(spawn_child(url, service, i, ttl, attach) for i in ids), return_exceptions=True
    )
    children = [p for p in started if isinstance(p, asyncio.subprocess.Process)]
    try:
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        return await kill_and_time(url, service, ids, children, ttl)
    finally:
        # Never leave a registered child behind, whatever went wrong.
        for process in children:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def kill_and_time(
    url: str, service: str, ids: list[str], children: list[asyncio.subprocess.Process], ttl: float
) -> list[float]:
    from shipyard.discovery import Discovery

    killed: dict[str, float] = {}
    gone: dict[str, float] = {}

    async def watch(discovery: Discovery) -> None:
        # Polling the warm cache every ms is what a caller sees; it costs ~1 ms resolution.
        while len(gone) < len(ids):
            present = {instance.id for instance in await discovery.instances(service)}
            now = time.monotonic()
            for instance_id, at in killed.items():
                if instance_id not in gone and instance_id not in present:
                    gone[instance_id] = now - at
            await asyncio.sleep(0.001)

    async with Discovery(url) as discovery:
        async with asyncio.timeout(LIMIT):
            # Polling is fine here: a cache read, with no event to wait on.
            while len(await discovery.instances(service)) < len(ids):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        watcher = asyncio.get_running_loop().create_task(watch(discovery))
        # Spread the kills over one heartbeat period so they land at different phases of it.
        gap = max(0.2, ttl / 3 / len(ids))
        for instance_id, process in zip(ids, children, strict=True):
            killed[instance_id] = time.monotonic()
            process.send_signal(signal.SIGKILL)
            await asyncio.sleep(gap)
        try:
            async with asyncio.timeout(ttl * 2 + LIMIT):
                await watcher
        except TimeoutError:
            pass  # the missing ones are reported as never gone
    return [gone.get(i, float("inf")) for i in ids]


async def etcd_min_ttl(port: int, requested: float) -> int:
    """The TTL etcd actually grants when asked for ``requested`` seconds."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v3/lease/grant", json={"TTL": str(int(requested))}) as r:
            grant = await r.json(content_type=None)
        async with session.post(f"{base}/v3/lease/revoke", json={"ID": grant["ID"]}) as r:
            await r.read()
    return int(grant["TTL"])


def print_failover(rows: list[tuple[str, str, list[float] | None]]) -> None:
    print(f"\nfailover: SIGKILL -> gone from Discovery.instances()  ({KILLS} kills per row)")
    print(f"{'row':<58}{'min':>8}{'median':>8}{'max':>8}  bound / note")
    for label, note, times in rows:
        if times is None:
            print(f"{label:<58}{'-':>8}{'-':>8}{'-':>8}  {note}")
            continue
        finite = [t for t in times if t != float("inf")]
        lost = len(times) - len(finite)
        cells = (min(finite), statistics.median(finite), max(finite)) if finite else ()
        text = "".join(f"{value:>7.3f}s" for value in cells) or f"{'-':>8}" * 3
        extra = f"; {lost} never left" if lost else ""
        print(f"{label:<58}{text}  {note}{extra}")


# --- 2. warm-cache lookup -------------------------------------------------------------------


def lookup_cases(discovery: Discovery, key: str) -> dict[str, AsyncCase]:
    """The warm lookup and its floors, each looping ``n`` times."""
    table = {key: discovery.cached(key)}
    get = table.get

    async def dict_get(n: int) -> None:
        for _ in range(n):
            get(key)

    async def found() -> tuple[Instance, ...] | None:
        return get(key)

    async def awaited_dict_get(n: int) -> None:
        for _ in range(n):
            await found()

    cached = discovery.cached

    async def discovery_cached(n: int) -> None:
        for _ in range(n):
            cached(key)

    instances = discovery.instances

    async def discovery_instances(n: int) -> None:
        for _ in range(n):
            await instances(key)

    return {
        "dict.get(name)": dict_get,
        "await coroutine returning dict.get(name)": awaited_dict_get,
        "Discovery.cached(name)": discovery_cached,
        "await Discovery.instances(name)  (warm)": discovery_instances,
    }


async def warm_lookup(registry_port: int) -> None:
    import consul

    from shipyard.discovery import Discovery

    key = "svc-0"
    async with Discovery(f"consul://127.0.0.1:{registry_port}") as discovery:
        count = len(await discovery.instances(key))
        cases = lookup_cases(discovery, key)
        # time_async_cases runs its own event loop, so it runs in a worker thread; the warm
        # path never touches the loop (it is a dict read), so which loop awaits it is moot.
        results = await asyncio.to_thread(time_async_cases, cases, loops=LOOPS, repeats=REPEATS)
    ours = "await Discovery.instances(name)  (warm)"
    print_overhead_table(
        f"warm-cache lookup, {count} instances cached; loops={LOOPS}, repeats={REPEATS}",
        results,
        bare="dict.get(name)",
        compare={ours: set(), "Discovery.cached(name)": set()},
    )
    client = consul.Consul(host="127.0.0.1", port=registry_port)

    def naive(n: int) -> None:
        for _ in range(n):
            client.health.service(key, passing=True)

    round_trip = await asyncio.to_thread(
        time_sync_cases, {"py-consul health.service": naive}, loops=40, repeats=5
    )
    naive_ns = round_trip["py-consul health.service"]
    verdict = "met" if results[ours] < 5000 else "NOT met"
    print(
        f"peer  py-consul health.service(name, passing=True) per lookup: {naive_ns / 1000:.0f} us"
    )
    print(
        f"      warm Discovery lookup {results[ours]:.0f} ns = {naive_ns / results[ours]:,.0f}x "
        f"faster than a round trip per lookup; target < 5 us: {verdict}"
    )


# --- 3. registry throughput -----------------------------------------------------------------


async def populate(port: int) -> None:
    """Register SERVICES x PER_SERVICE instances, each with a passing TTL check."""
    from shipyard.discovery import ConsulBackend, Registration

    backend = ConsulBackend("127.0.0.1", port)
    gate = asyncio.Semaphore(32)

    async def one(service: int, number: int) -> None:
        registration = Registration(
            name=f"svc-{service}",
            id=f"svc-{service}-{number}",
            address=f"10.0.{service}.{number}",
            port=8000 + number,
            tags=("bench", f"zone-{number % 3}"),
            meta={"version": "1.0.0"},
            ttl=3600.0,  # outlives the run, so every instance stays passing
        )
        async with gate:
            await backend.register(registration)
            await backend.heartbeat(registration.id)

    try:
        await asyncio.gather(*(one(s, n) for s in range(SERVICES) for n in range(PER_SERVICE)))
    finally:
        await backend.close()


LUA = """
counter = 0
request = function()
  local path = "/v1/health/service/svc-" .. (counter % %d) .. "?passing=1"
  counter = counter + 1
  return wrk.format("GET", path)
end
"""


def wrk(port: int, script: Path, seconds: int) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script)]
    output = subprocess.run(
        taskset(LOAD_CORE, [*command, f"http://127.0.0.1:{port}/"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)

    def latency_ms(pct: str) -> float:
        hit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if hit is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[hit.group(2)]
        return float(hit.group(1)) * scale

    return {
        "rps": float(found.group(1)),
        "p50": latency_ms("50"),
        "p99": latency_ms("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


async def client_loop(port: int, seconds: int) -> dict[str, float]:
    """wrk's stand-in: CONNECTIONS aiohttp workers in this process (shares our core)."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal failures
        n = offset
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{port}/v1/health/service/svc-{n % SERVICES}?passing=1"
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                failures += response.status != 200
            latencies.append(time.perf_counter() - start)
            n += 1

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, n) for n in range(CONNECTIONS)))
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "non2xx": float(failures),
    }


async def throughput(port: int, tmp: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/v1/health/service/svc-0?passing=1"
        async with session.get(url) as response:
            body = await response.read()
    entries = len(json.loads(body))
    if shutil.which("wrk"):
        script = tmp / "health.lua"
        script.write_text(LUA.replace("%d", str(SERVICES)))
        await asyncio.to_thread(wrk, port, script, 1)  # warm-up
        result = await asyncio.to_thread(wrk, port, script, SECONDS)
        how = f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s"
        pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        how += f", registry on core {REGISTRY_CORE}, wrk on core {LOAD_CORE}" if pinned else ""
    else:
        print("wrk not found (apt-get install -y wrk): measuring with an aiohttp client loop")
        result = await client_loop(port, SECONDS)
        how = f"aiohttp client loop, {CONNECTIONS} workers, {SECONDS}s"
    print(
        f"\nregistry throughput: GET /v1/health/service/svc-<0..{SERVICES - 1}>?passing=1, "
        f"{SERVICES} x {PER_SERVICE} instances registered ({how})"
    )
    print(f"{'response':<38}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    shape = f"{entries} instances, {len(body) / 1024:.0f} KiB JSON"
    print(
        f"{shape:<38}{result['rps']:>10,.0f}{result['p50']:>9.2f}{result['p99']:>9.2f}"
        f"{result['non2xx']:>9.0f}"
    )


# --- the run --------------------------------------------------------------------------------


async def run(tmp: Path) -> None:
    registry_port = free_port()
    registry = start_registry(registry_port)
    etcd: subprocess.Popen[bytes] | None = None
    try:
        registry_url = f"consul://127.0.0.1:{registry_port}"
        rows: list[tuple[str, str, list[float] | None]] = []
        attached = await failover(registry_url, "attached", ttl=TTL, attach=True)
        rows.append(
            (
                "(a) shipyard registry, live connection (attach)",
                "target < 1 s",
                attached,
            )
        )
        binary = shutil.which("etcd")
        if binary is None:
            rows.append(
                ("(b) etcd lease", "skipped: etcd missing (apt-get install -y etcd-server)", None)
            )
        else:
            etcd_port = free_port()
            etcd = start_etcd(binary, tmp / "etcd", etcd_port)
            granted = await etcd_min_ttl(etcd_port, ETCD_TTL)
            leased = await failover(
                f"etcd://127.0.0.1:{etcd_port}/bench", "leased", ttl=ETCD_TTL, attach=True
            )
            label = f"(b) etcd lease, asked TTL {ETCD_TTL:g} s, granted {granted} s"
            rows.append((label, f"bound: {granted} s TTL + etcd's 0.5 s expiry scan", leased))
        ttl_only = await failover(registry_url, "ttl-only", ttl=TTL, attach=False)
        rows.append(
            (
                f"(c) shipyard registry, TTL check only ({TTL:g} s)",
                f"bound: TTL ({TTL:g} s), heartbeat every {TTL / 3:.1f} s",
                ttl_only,
            )
        )
        print_failover(rows)
        await populate(registry_port)
        await warm_lookup(registry_port)
        await throughput(registry_port, tmp)
    finally:
        stop(registry)
        if etcd is not None:
            etcd.kill()
            etcd.wait()


def main() -> None:
    """Run the three parts; ``BENCH_SECONDS``, ``BENCH_KILLS``, ``BENCH_LOOPS`` scale them."""
    from shipyard.core import configure_logging

    # Unconfigured structlog prints to stdout; keep the tables readable.
    configure_logging(level="WARNING")
    etcd_version = ""
    if shutil.which("etcd"):
        version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
        etcd_version = f", etcd {version.split()[2] if version else '?'}"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores{etcd_version}")
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        url, service, instance_id, ttl, mode = sys.argv[2:7]
        asyncio.run(child(url, service, instance_id, float(ttl), mode == "attach"))
    else:
        main()
