"""The reference shop end to end, on the embedded default (SQLite per service, the SQLite
event log, ``shipyard registry``), in one run of about a minute:

  (a) orders/s through the gateway with the orchestrated saga: ``BENCH_CUSTOMERS``
      (default 16) concurrent customers for ``BENCH_ORDER_SECONDS`` (default 20) s, each
      placing an order (``POST /web/api/orders``, JWT + Idempotency-Key) and polling
      ``GET /web/api/orders/{id}`` through the gateway every 10 ms until it is final.
      Latency is "placed" (the 202) and "confirmed" (first poll that sees CONFIRMED, so
      up to one poll interval late); throughput counts confirmed orders.
  (b) the web BFF product page (``/web/api/product/{id}``: products, inventory, reviews
      and recommendations fetched in parallel and merged) and (c) the mobile BFF's compact
      page, each with wrk (``BENCH_PAGE_SECONDS``, default 10 s, 32 connections) — or an
      aiohttp loop when wrk is not installed.

Every process of the shop runs on this machine beside the load generator, so the numbers
are the whole system's, not the gateway's alone (``bench/gateway.py`` measures that).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from examples.shop.supervisor import Supervisor, memory_in_use
from tests.shop.driver import ShopDriver

from shipyard.core import configure_logging

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "16"))
ORDER_SECONDS = float(os.environ.get("BENCH_ORDER_SECONDS", "20"))
PAGE_SECONDS = int(os.environ.get("BENCH_PAGE_SECONDS", "10"))
CONNECTIONS = 32
POLL = 0.01
PRODUCTS = [f"p-{n:03d}" for n in range(1, 13)]
USERS = ("u-1", "u-2", "u-3", "u-4", "u-5")


@dataclass
class OrderRun:
    """What the customers saw."""

    placed_ms: list[float] = field(default_factory=list)
    confirmed_ms: list[float] = field(default_factory=list)
    cancelled: int = 0
    failed: int = 0
    seconds: float = 0.0


def machine() -> str:
    """``N cores, M GiB`` of this machine."""
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return f"{os.cpu_count()} cores, {memory / 2**30:.1f} GiB memory"


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def customer(driver: ShopDriver, number: int, until: float, run: OrderRun) -> None:
    """Place an order, poll it through the gateway until final, again until ``until``."""
    user = USERS[number % len(USERS)]
    headers = {**driver.headers(user), "Content-Type": "application/json"}
    base = driver.shop.gateway_url
    turn = 0
    while time.monotonic() < until:
        product = PRODUCTS[(number + turn) % len(PRODUCTS)]
        turn += 1
        began = time.perf_counter()
        status, answer = await driver.place(user, [{"product_id": product, "quantity": 1}])
        placed = time.perf_counter()
        if status != 202:
            run.failed += 1
            continue
        run.placed_ms.append((placed - began) * 1000)
        url = f"{base}/web/api/orders/{answer['order_id']}"
        while True:
            async with driver.http.get(url, headers=headers) as reply:
                order = await reply.json() if reply.status == 200 else {}
            state = order.get("status")
            if state == "CONFIRMED":
                run.confirmed_ms.append((time.perf_counter() - began) * 1000)
                break
            if state == "CANCELLED":
                run.cancelled += 1
                break
            await asyncio.sleep(POLL)


async def order_run(driver: ShopDriver, customers: int, seconds: float) -> OrderRun:
    """``customers`` concurrent customers for ``seconds``."""
    run = OrderRun()
    began = time.monotonic()
    until = began + seconds
    await asyncio.gather(*(customer(driver, n, until, run) for n in range(customers)))
    run.seconds = time.monotonic() - began
    return run


def wrk(url: str, token: str, seconds: int) -> dict[str, float]:
    """Requests/s, p50/p99 (ms) and non-2xx of one wrk run."""
    command = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": float(found.group(1)) if found else float("nan"),
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


async def aiohttp_loop(url: str, token: str, seconds: float) -> dict[str, float]:
    """The wrk measurement with ``CONNECTIONS`` aiohttp workers (when wrk is missing)."""
    latencies: list[float] = []
    non2xx = 0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as http:
        until = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal non2xx
            while time.monotonic() < until:
                began = time.perf_counter()
                async with http.get(url, headers=headers) as reply:
                    await reply.read()
                    non2xx += reply.status >= 300
                latencies.append((time.perf_counter() - began) * 1000)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        elapsed = time.monotonic() - began
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "non2xx": float(non2xx),
    }


async def page(url: str, token: str) -> dict[str, float]:
    """Measure one page with wrk (after a 2 s warm-up), else with the aiohttp loop."""
    if shutil.which("wrk"):
        await asyncio.to_thread(wrk, url, token, 2)
        return await asyncio.to_thread(wrk, url, token, PAGE_SECONDS)
    await aiohttp_loop(url, token, 2)
    return await aiohttp_loop(url, token, PAGE_SECONDS)


async def run() -> None:
    configure_logging(json=False, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-shop-") as tmp:
        shop = Supervisor(
            Path(tmp) / "var",
            registry_port=0,
            gateway_port=0,
            base_port=None,
            start_timeout=60.0,
        )
        await shop.start()
        try:
            print(
                f"shop ready in {shop.ready_in or 0:.1f} s: {len(shop.instances())} processes,"
                f" {memory_in_use(shop) // 2**20} MiB",
                flush=True,
            )
            timeout = aiohttp.ClientTimeout(total=30)
            connector = aiohttp.TCPConnector(limit=4 * CUSTOMERS)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                driver = ShopDriver(shop, http)
                await order_run(driver, CUSTOMERS, 2.0)  # warm-up: pools, caches, sqlite pages
                orders = await order_run(driver, CUSTOMERS, ORDER_SECONDS)
                token = driver.headers("u-1")["Authorization"].removeprefix("Bearer ")
            web = await page(f"{shop.gateway_url}/web/api/product/p-001", token)
            mobile = await page(f"{shop.gateway_url}/mobile/api/product/p-001", token)
            memory = memory_in_use(shop)
        finally:
            await shop.stop()
    report(orders, web, mobile, memory)


def report(orders: OrderRun, web: dict[str, float], mobile: dict[str, float], memory: int) -> None:
    """Print the table."""
    tool = "wrk" if shutil.which("wrk") else "aiohttp loop"
    confirmed = len(orders.confirmed_ms)
    print(
        f"\nreference shop, embedded default (SQLite + SQLite event log); {machine()};"
        f" Python {sys.version.split()[0]}; load generator on the same machine"
    )
    print(
        f"  orders, orchestrated saga, {CUSTOMERS} customers x {orders.seconds:.0f} s:"
        f" {confirmed / orders.seconds:,.1f} confirmed orders/s"
        f"  ({confirmed} confirmed, {orders.cancelled} cancelled, {orders.failed} refused)"
    )
    print(
        f"    placed (202)         p50 {percentile(orders.placed_ms, 50):7.1f} ms"
        f"   p99 {percentile(orders.placed_ms, 99):7.1f} ms"
    )
    print(
        f"    confirmed (polled)   p50 {percentile(orders.confirmed_ms, 50):7.1f} ms"
        f"   p99 {percentile(orders.confirmed_ms, 99):7.1f} ms"
        f"   (mean {statistics.fmean(orders.confirmed_ms or [float('nan')]):.1f} ms)"
    )
    for name, result in (("web BFF product page", web), ("mobile BFF product page", mobile)):
        flag = f"  (!! {int(result['non2xx'])} non-2xx)" if result["non2xx"] else ""
        print(
            f"  {name:<24} {result['rps']:>8,.0f} req/s   p50 {result['p50']:6.1f} ms"
            f"   p99 {result['p99']:6.1f} ms   ({tool}, {CONNECTIONS} connections,"
            f" {PAGE_SECONDS} s){flag}"
        )
    print(f"  memory of the whole shop after the run: {memory // 2**20} MiB")


def main() -> None:
    """Run the benchmark and print the table."""
    asyncio.run(run())


if __name__ == "__main__":
    main()
