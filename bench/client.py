"""ServiceClient throughput against raw aiohttp (and httpx), in one run.

64 concurrent callers loop on GET against a fast local upstream: nginx (one worker,
keep-alive, a small static JSON body) when installed, else a tiny raw-asyncio HTTP server,
in a subprocess pinned to core 1 (the benchmark itself runs on core 0). Cases, each given
the same keep-alive pool size and run for ``BENCH_SECONDS`` (default 1.5) per round,
interleaved over ``BENCH_ROUNDS`` (default 7) rounds (short rounds, many of them, so that
other load on a shared machine hits every case alike); the median round counts:

  (a) raw aiohttp ClientSession, one shared session, no policy at all; like a client call
      it reads the whole body and checks the status (aiohttp's default 5-minute total
      timeout arms a timer per request: the counterpart of the client's call timeout)
  (a') the same without ``async with``: awaited, then read() (which returns the connection
      to the pool), as ServiceClient calls aiohttp; for reference, since the context
      manager's exit is a measurable share of (a)
  (b) ServiceClient, full pipeline: call timeout, retry, service breaker, per-instance
      breaker, bulkhead, static discovery, round-robin, outlier detection, traceparent
  (b') the same plus a per-attempt timeout (a second timer per call)
  (c) httpx AsyncClient, for reference

Target (issue 4): (b) >= 85% of (a)'s req/s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.local_servers import free_port, nginx_conf, taskset, wait_port

SECONDS = float(os.environ.get("BENCH_SECONDS", "1.5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
CONCURRENCY = 64
BODY = '{"id":42,"name":"widget","price":9.5}'
UPSTREAM_CORE = "1"

RAW_SERVER = """
import asyncio, sys
BODY = sys.argv[2].encode()
RESPONSE = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\\r\\n\\r\\n" + BODY)

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\\r\\n\\r\\n")) >= 0:
            self.buffer = self.buffer[end + 4:]
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def pinned(command: list[str]) -> list[str]:
    return taskset(UPSTREAM_CORE, command) if (os.cpu_count() or 1) >= 2 else command


def start_upstream(tmp: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    if nginx:
        conf = nginx_conf(
            tmp,
            f"""server {{ listen 127.0.0.1:{port};
                location / {{ default_type application/json; return 200 '{BODY}'; }} }}""",
        )
        return subprocess.Popen(pinned([nginx, "-c", str(conf)])), "nginx (1 worker)"
    script = tmp / "upstream.py"
    script.write_text(RAW_SERVER)
    command = [sys.executable, str(script), str(port), BODY]
    return subprocess.Popen(pinned(command)), "raw asyncio server"


Case = Callable[[], Awaitable[None]]


async def run_for(call: Case, seconds: float) -> tuple[float, float]:
    """Requests per second of ``CONCURRENCY`` workers calling ``call`` for ``seconds``, and
    this process's CPU microseconds per request (steadier than req/s when other work shares
    the machine: time stolen by other processes is not counted)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu_us = (time.process_time() - cpu) / max(done, 1) * 1e6
    return done / (time.perf_counter() - start), cpu_us


async def measure(port: int) -> dict[str, tuple[float, float, float]]:
    import aiohttp
    import httpx

    from shipyard.client import ServiceClient
    from shipyard.discovery import Discovery, RoundRobin

    url = f"http://127.0.0.1:{port}/api/item"
    raw = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30))
    peer = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
    discovery = Discovery(f"static://item=127.0.0.1:{port}")
    policy = {
        "retry": {"max_attempts": 3},
        "circuit_breaker": {},
        "instance_circuit_breaker": {},
        "bulkhead": {"max_concurrent": CONCURRENCY},
    }
    ours = ServiceClient(
        "item", discovery=discovery, balancer=RoundRobin(), policy=policy, timeout=10
    )
    # The same plus a per-attempt timeout: a second asyncio timer on every call.
    ours_attempt_timeout = ServiceClient(
        "item", discovery=discovery, policy={**policy, "timeout": 5}, timeout=10
    )

    async def raw_call() -> None:
        async with raw.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(response.status)

    async def raw_awaited_call() -> None:
        response = await raw.get(url)
        await response.read()
        if response.status != 200:
            raise RuntimeError(response.status)

    async def ours_call() -> None:
        await ours.get("/api/item")

    async def ours_attempt_timeout_call() -> None:
        await ours_attempt_timeout.get("/api/item")

    async def httpx_call() -> None:
        (await peer.get(url)).raise_for_status()

    cases: dict[str, Case] = {
        "raw aiohttp ClientSession": raw_call,
        "  awaited, no async with": raw_awaited_call,
        "ServiceClient (full pipeline)": ours_call,
        "  + per-attempt timeout": ours_attempt_timeout_call,
        "httpx AsyncClient": httpx_call,
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    try:
        for call in cases.values():  # warm-up: open the pools, fill the caches
            await run_for(call, 0.3)
        for _ in range(ROUNDS):
            for name, call in cases.items():
                seconds = SECONDS if name != "httpx AsyncClient" else min(SECONDS, 0.5)
                samples[name].append(await run_for(call, seconds))
    finally:
        await raw.close()
        await peer.aclose()
        await ours.aclose()
        await ours_attempt_timeout.aclose()
        await discovery.aclose()
    raw_cpu = [cpu for _, cpu in samples["raw aiohttp ClientSession"]]
    return {
        name: (
            statistics.median(rps for rps, _ in values),
            statistics.median(cpu for _, cpu in values),
            # Each round's ratio to the raw run just before it, then the median: load that
            # comes and goes on a shared machine hits both sides of a pair alike.
            statistics.median(base / cpu for base, (_, cpu) in zip(raw_cpu, values, strict=True)),
        )
        for name, values in samples.items()
    }


def main() -> None:
    """Run the comparison and print req/s and the ratio to raw aiohttp."""
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # the upstream has core 1 to itself
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-client-") as tmpdir:
        port = free_port()
        process, upstream = start_upstream(Path(tmpdir), port)
        try:
            wait_port(port)
            try:
                import uvloop

                results = uvloop.run(measure(port))
                loop_name = "uvloop"
            except ImportError:
                results = asyncio.run(measure(port))
                loop_name = "asyncio"
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(
        f"upstream: {upstream} on core {UPSTREAM_CORE}; {CONCURRENCY} concurrent GETs, "
        f"{loop_name}, median of {ROUNDS} rounds of {SECONDS:g}s (httpx: 0.5s rounds)"
    )
    raw, raw_cpu, _ = results["raw aiohttp ClientSession"]
    print(
        f"  {'case':<34} {'req/s':>10}   {'vs raw':>6}   {'CPU us/req':>10}   {'vs raw':>6}"
        f"   {'paired':>6}"
    )
    for name, (rps, cpu, paired) in results.items():
        print(
            f"  {name:<34} {rps:>10,.0f}   {rps / raw:>6.1%}   {cpu:>10.1f}   {raw_cpu / cpu:>6.1%}"
            f"   {paired:>6.1%}"
        )
    ours, ours_cpu, ours_paired = results["ServiceClient (full pipeline)"]
    print(
        f"  ServiceClient / raw aiohttp = {ours / raw:.1%} by req/s, "
        f"{raw_cpu / ours_cpu:.1%} by CPU per request, {ours_paired:.1%} paired by round"
        "   (target >= 85%)"
    )
    print("  (paired: median over rounds of raw's CPU/request over the case's in that round)")


if __name__ == "__main__":
    main()
