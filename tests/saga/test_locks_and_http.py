"""Semantic locks show a resource as pending; HTTP steps carry the idempotency key."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shipyard.saga import SemanticLock, SemanticLockError, StepContext, http_action
from shipyard.storage import Database


async def test_a_pending_resource_is_refused_to_other_sagas_until_released(
    sqlite_db: Database,
) -> None:
    lock = SemanticLock(sqlite_db)
    await lock.install()
    async with sqlite_db.transaction() as tx:
        await lock.acquire(tx, "order:42", "saga-a")
        await lock.acquire(tx, "order:42", "saga-a")  # a re-run step takes it again
    assert await lock.holder("order:42") == "saga-a"
    with pytest.raises(SemanticLockError, match="order:42 is pending in saga 'saga-a'"):
        async with sqlite_db.transaction() as tx:
            await lock.acquire(tx, "order:42", "saga-b")
    async with sqlite_db.transaction() as tx:
        await lock.release(tx, "order:42", "saga-b")  # not the holder: no effect
    assert await lock.holder("order:42") == "saga-a"
    async with sqlite_db.transaction() as tx:
        await lock.release(tx, "order:42", "saga-a")
        await lock.acquire(tx, "order:42", "saga-b")
    assert await lock.holder("order:42") == "saga-b"


class Order(msgspec.Struct):
    order_id: str
    charge_id: str | None = None


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []

    async def post_json(self, path: str, json: Any, *, headers: Any = None) -> Any:
        self.calls.append((path, json, dict(headers)))
        return {"charge_id": "ch-9"}


async def test_an_http_step_posts_with_the_saga_idempotency_key() -> None:
    client = RecordingClient()
    charge = http_action(
        client,
        lambda ctx: f"/orders/{ctx.data.order_id}/charge",
        merge=lambda data, answer: msgspec.structs.replace(data, charge_id=answer["charge_id"]),
    )
    ctx = StepContext("s-1", "order", "charge_payment", 2, Order("o-1"))
    result = await charge(ctx)
    assert result == Order("o-1", charge_id="ch-9")
    [(path, body, headers)] = client.calls
    assert (path, body) == ("/orders/o-1/charge", {"order_id": "o-1", "charge_id": None})
    assert headers["Idempotency-Key"] == "s-1:charge_payment"
    refund = http_action(client, "/refunds", body=lambda ctx: {"order": ctx.data.order_id})
    undo = StepContext("s-1", "order", "charge_payment", 1, Order("o-1"), compensating=True)
    assert await refund(undo) is None
    assert client.calls[-1][2]["Idempotency-Key"] == "s-1:charge_payment:compensate"
