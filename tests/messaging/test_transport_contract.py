"""One contract for every transport (memory, sqlite, nats), exercised through the EventBus."""

from __future__ import annotations

from shipyard.messaging import DeadLetterStore, Delivery, Subscription, WireMessage
from shipyard.storage import Transaction
from tests.messaging.conftest import OrderCreated, TransportKit, eventually


async def test_a_published_event_reaches_every_group(kit: TransportKit) -> None:
    bus = await kit.bus()
    seen: dict[str, list[str]] = {"inventory": [], "billing": []}
    for group in seen:

        async def handle(event: OrderCreated, tx: Transaction, group: str = group) -> None:
            seen[group].append(event.order_id)

        bus.subscribe(OrderCreated, group=group, handler=handle)
    await bus.start()
    await bus.publish(OrderCreated(order_id="o-1"), OrderCreated(order_id="o-2"))
    await eventually(lambda: all(len(ids) == 2 for ids in seen.values()))
    assert seen == {"inventory": ["o-1", "o-2"], "billing": ["o-1", "o-2"]}


async def test_a_redelivered_event_is_applied_once_thanks_to_the_inbox(kit: TransportKit) -> None:
    db = await kit.database()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE stock (order_id TEXT, reserved INTEGER)")
    bus = await kit.bus(db)

    @bus.subscribe(OrderCreated, group="inventory")
    async def reserve(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO stock VALUES (?, ?)", event.order_id, event.quantity)

    await bus.start()
    event = OrderCreated(order_id="o-1", quantity=3)
    await bus.publish(event)
    await bus.publish(event)  # the same id again: what a relay crash produces
    await bus.publish(OrderCreated(order_id="o-2"))
    await eventually(lambda: bus.handled == 2)
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT order_id, reserved FROM stock ORDER BY order_id")
    assert rows == [("o-1", 3), ("o-2", 1)]


async def test_events_with_the_same_key_are_handled_in_publish_order(kit: TransportKit) -> None:
    db = await kit.database()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE handled (seq INTEGER PRIMARY KEY, key TEXT, n INTEGER)")
    bus = await kit.bus(db, batch_size=7)
    failed_once: set[str] = set()

    @bus.subscribe(OrderCreated, group="audit")
    async def record(event: OrderCreated, tx: Transaction) -> None:
        # One early failure forces the one-by-one path, which must keep the order too.
        if event.order_id == "a-3" and event.order_id not in failed_once:
            failed_once.add(event.order_id)
            raise RuntimeError("transient")
        await tx.execute(
            "INSERT INTO handled (key, n) VALUES (?, ?)", event.ordering_key, event.quantity
        )

    await bus.start()
    events = [
        OrderCreated(order_id=f"{key}-{n}", quantity=n, ordering_key=key)
        for n in range(20)
        for key in ("a", "b")
    ]
    await bus.publish(*events)
    await eventually(lambda: bus.handled == 40)
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT key, n FROM handled ORDER BY seq")
    assert failed_once == {"a-3"}
    for key in ("a", "b"):
        assert [n for k, n in rows if k == key] == list(range(20))


async def test_groups_keep_independent_positions(kit: TransportKit) -> None:
    first = await kit.bus()
    early: list[str] = []

    @first.subscribe(OrderCreated, group="early")
    async def on_early(event: OrderCreated, tx: Transaction) -> None:
        early.append(event.order_id)

    await first.start()
    await first.publish(OrderCreated(order_id="o-1"), OrderCreated(order_id="o-2"))
    await eventually(lambda: len(early) == 2)

    second = await kit.bus(await kit.database("late"))
    late: list[str] = []

    @second.subscribe(OrderCreated, group="late")
    async def on_late(event: OrderCreated, tx: Transaction) -> None:
        late.append(event.order_id)

    await second.start()
    await eventually(lambda: len(late) == 2)
    await first.publish(OrderCreated(order_id="o-3"))
    await eventually(lambda: len(early) == 3 and len(late) == 3)
    assert early == late == ["o-1", "o-2", "o-3"]


async def test_a_new_group_can_start_from_now(kit: TransportKit) -> None:
    publisher = await kit.bus()
    await publisher.publish(OrderCreated(order_id="old"))
    bus = await kit.bus(await kit.database("fresh"), start_from="now")
    seen: list[str] = []

    @bus.subscribe(OrderCreated, group="fresh")
    async def handle(event: OrderCreated, tx: Transaction) -> None:
        seen.append(event.order_id)

    await bus.start()  # returns once the group is bound, so "now" is now
    await publisher.publish(OrderCreated(order_id="new"))
    await eventually(lambda: seen == ["new"])


async def test_a_poison_event_goes_to_dead_letters_after_max_attempts(kit: TransportKit) -> None:
    db = await kit.database()
    bus = await kit.bus(db, max_attempts=3)
    calls: dict[str, int] = {}
    handled: list[str] = []

    @bus.subscribe(OrderCreated, group="billing")
    async def charge(event: OrderCreated, tx: Transaction) -> None:
        calls[event.order_id] = calls.get(event.order_id, 0) + 1
        if event.order_id == "poison":
            raise ValueError("card number missing")
        handled.append(event.order_id)

    await bus.start()
    await bus.publish(
        OrderCreated(order_id="o-1"),
        OrderCreated(order_id="poison"),
        OrderCreated(order_id="o-2"),
    )
    await eventually(lambda: bus.dead_lettered == 1 and bus.handled == 2)
    await bus.publish(OrderCreated(order_id="o-3"))
    await eventually(lambda: "o-3" in handled)
    assert calls["poison"] == 3
    assert kit.clock.slept, "retries back off on the injected clock"
    [letter] = await DeadLetterStore(db).list()
    assert (letter.group, letter.name, letter.attempts) == ("billing", "OrderCreated", 3)
    assert "card number missing" in letter.error


async def test_undecodable_bytes_go_to_dead_letters_without_blocking(kit: TransportKit) -> None:
    db = await kit.database()
    bus = await kit.bus(db)
    seen: list[str] = []

    @bus.subscribe(OrderCreated, group="inventory")
    async def handle(event: OrderCreated, tx: Transaction) -> None:
        seen.append(event.order_id)

    await bus.start()
    transport = await kit.transport()
    await transport.publish([WireMessage("OrderCreated", "garbage-1", None, b"\x00not json")])
    await bus.publish(OrderCreated(order_id="o-1"))
    await eventually(lambda: seen == ["o-1"] and bus.dead_lettered == 1)
    [letter] = await DeadLetterStore(db).list()
    assert letter.event_id == "garbage-1"
    assert letter.body == b"\x00not json"
    assert "cannot decode" in letter.error


async def fetch_at_least(subscription: Subscription, count: int) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived: a fetch may return a partial batch
    (JetStream hands out what is ready), so one call proves nothing about the rest."""
    deliveries: list[Delivery] = []
    for _ in range(20):
        deliveries += await subscription.fetch(10, 2.0)
        if len(deliveries) >= count:
            break
    return deliveries


async def test_unacknowledged_deliveries_come_back_after_resubscribing(kit: TransportKit) -> None:
    transport = await kit.transport()
    messages = [WireMessage("OrderCreated", f"id-{n}", None, b"{}") for n in range(3)]
    await transport.publish(messages)
    subscription = await transport.subscribe("g")
    first = await fetch_at_least(subscription, 3)
    assert [d.message.event_id for d in first] == ["id-0", "id-1", "id-2"]
    await subscription.ack(first[:1])
    await subscription.close()  # "crash": id-1 and id-2 were never acknowledged

    again = await (await kit.transport()).subscribe("g")
    redelivered = await fetch_at_least(again, 2)
    assert [d.message.event_id for d in redelivered] == ["id-1", "id-2"]
    await again.ack(redelivered)
    await again.close()
