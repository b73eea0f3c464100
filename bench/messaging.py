"""End-to-end event throughput and latency: outbox -> relay -> transport -> inbox handler.

Latency runs from the producer's transaction committing (the event is in the outbox) to
the consumer's transaction committing (the handler ran and the inbox row is stored), both
SQLite files under a temp dir. Measured on the SQLite transport and on NATS JetStream; a
raw nats-py JetStream publish -> pull -> ack run in the same process is the ceiling for
the latter. Targets (issue): SQLite >= 5,000 events/s with p99 < 50 ms; JetStream >= 40%
of raw. ``BENCH_EVENTS`` sets the events per run (default 20,000); ``BENCH_PER_TX`` how
many events each producer transaction adds (default 1: one event per business change).

Run: ``python bench/messaging.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Runnable as a plain script: make ``shipyard`` importable from a source checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shipyard.core import ManualClock
from shipyard.messaging import (
    Event,
    EventBus,
    EventRegistry,
    Outbox,
    OutboxRelay,
    Transport,
    open_transport,
)
from shipyard.storage import Transaction, open_database

EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
PRODUCERS = 4
PER_TRANSACTION = int(os.environ.get("BENCH_PER_TX", "1"))
NATS_URL = "nats://127.0.0.1:4222"


class OrderPlaced(Event):
    order_id: str
    total_cents: int


class Result:
    def __init__(self, name: str, events: int, seconds: float, latencies: list[float]) -> None:
        self.name = name
        self.rate = events / seconds
        self.latencies = sorted(latencies)

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        index = min(len(self.latencies) - 1, int(p / 100 * len(self.latencies)))
        return self.latencies[index] * 1000


async def end_to_end(name: str, transport: Transport, directory: Path, events: int) -> Result:
    registry = EventRegistry()
    registry.register(OrderPlaced)
    orders = await open_database(f"sqlite:///{directory / f'{name}-orders.db'}")
    billing = await open_database(f"sqlite:///{directory / f'{name}-billing.db'}")
    outbox = Outbox(registry)
    relay = OutboxRelay(orders, transport, outbox=outbox, batch_size=500)
    # ManualClock only drives retry backoff, which never triggers here.
    bus = EventBus(transport, billing, registry, batch_size=500, clock=ManualClock())
    committed: dict[str, float] = {}
    handled_at: dict[str, float] = {}
    done = asyncio.Event()

    @bus.subscribe(OrderPlaced, group="billing")
    async def charge(event: OrderPlaced, tx: Transaction) -> None:
        def handled(event_id: str = event.id) -> None:
            # The consumer can commit before the producer's task has even resumed from
            # its own commit, so latencies are computed at the end, not here.
            handled_at[event_id] = time.perf_counter()
            if len(handled_at) == events:
                done.set()

        tx.after_commit(handled)

    async def produce(worker: int, count: int) -> None:
        for n in range(0, count, PER_TRANSACTION):
            batch = [
                OrderPlaced(order_id=f"{worker}-{n + i}", total_cents=1999)
                for i in range(min(PER_TRANSACTION, count - n))
            ]
            async with orders.transaction() as tx:
                await outbox.add(tx, *batch)
            now = time.perf_counter()
            for event in batch:
                committed[event.id] = now

    await bus.start()
    relay.start()
    await asyncio.sleep(0.2)  # let both loops settle into waiting
    start = time.perf_counter()
    per_producer = events // PRODUCERS
    await asyncio.gather(*(produce(w, per_producer) for w in range(PRODUCERS)))
    events = per_producer * PRODUCERS
    if len(handled_at) < events:
        await asyncio.wait_for(done.wait(), 120)
    seconds = time.perf_counter() - start
    # Never below zero: "handled before the producer saw its commit" counts as instant.
    latencies = [max(0.0, at - committed[event_id]) for event_id, at in handled_at.items()]
    await relay.stop()
    await bus.stop()
    await orders.close()
    await billing.close()
    return Result(name, events, seconds, latencies)


async def raw_jetstream(events: int) -> Result | None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    try:
        nc = await nats.connect(NATS_URL, connect_timeout=1)
    except Exception as error:
        print(f"NATS not reachable at {NATS_URL}: {error!r}")
        return None
    js = nc.jetstream()
    stream = f"bench_raw_{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    pull = await js.pull_subscribe(
        f"{stream}.>",
        durable="raw",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    body = b"x" * 300  # about the size of an encoded OrderPlaced envelope
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < events:
            try:
                msgs = await pull.fetch(500, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            received += len(msgs)

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for offset in range(0, events, 500):
        acks = [
            await js.publish_async(
                f"{stream}.OrderPlaced", body, headers={"Nats-Msg-Id": f"{offset}-{i}"}
            )
            for i in range(min(500, events - offset))
        ]
        await asyncio.gather(*acks)
    await consumer
    seconds = time.perf_counter() - start
    await js.delete_stream(stream)
    await nc.close()
    return Result("raw nats-py JetStream", events, seconds, [])


def print_table(results: list[Result], raw: Result | None) -> None:
    print(f"\n{'run':<28}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'vs raw':>10}")
    for result in results:
        p50, p99 = result.percentile(50), result.percentile(99)
        ratio = f"{result.rate / raw.rate:.0%}" if raw and "NATS" in result.name else ""
        print(
            f"{result.name:<28}{result.rate:>12,.0f}"
            f"{p50 if p50 is not None else float('nan'):>10.1f}"
            f"{p99 if p99 is not None else float('nan'):>10.1f}{ratio:>10}"
        )
    if raw:
        print(f"{raw.name:<28}{raw.rate:>12,.0f}{'-':>10}{'-':>10}{'100%':>10}")
    print(
        "\ntargets: SQLite >= 5,000 events/s with p99 < 50 ms; JetStream end-to-end >= 40% of raw"
    )


async def run() -> None:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        directory = Path(tmp)
        sqlite_bus = await open_transport(f"sqlite:///{directory / 'bus.db'}")
        results.append(await end_to_end("SQLite transport", sqlite_bus, directory, EVENTS))
        await sqlite_bus.close()
        raw = await raw_jetstream(EVENTS)
        if raw is not None:
            stream = f"bench_{uuid.uuid4().hex[:8]}"
            nats_bus = await open_transport(NATS_URL, stream=stream)
            results.append(
                await end_to_end("NATS JetStream transport", nats_bus, directory, EVENTS)
            )
            await nats_bus.delete_stream()  # type: ignore[attr-defined]
            await nats_bus.close()
    print_table(results, raw)


def main() -> None:
    """Run the messaging benchmark and print the table."""
    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
