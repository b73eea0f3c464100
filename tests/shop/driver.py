"""A small asyncio driver for the shop: places orders through the gateway with a real
HTTP client and a JWT, waits for their end states, and reads the ledgers the invariant
checks compare (stock at inventory, money at payments and at the provider)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from examples.shop.auth import mint_token
from examples.shop.supervisor import Supervisor

FINAL = ("CONFIRMED", "CANCELLED")


@dataclass
class Placed:
    """An order the driver placed: its id, what it asked for, and its end state."""

    order_id: str
    user_id: str
    lines: list[dict[str, Any]]
    total_cents: int
    status: str = "PENDING"
    reason: str | None = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


class ShopDriver:
    """Talks to a running shop the way a web client does (through the gateway)."""

    def __init__(self, shop: Supervisor, http: aiohttp.ClientSession) -> None:
        self.shop = shop
        self.http = http
        self._tokens: dict[str, str] = {}

    def headers(self, user_id: str) -> dict[str, str]:
        """``Authorization`` with a JWT for ``user_id``."""
        token = self._tokens.get(user_id)
        if token is None:
            token = self._tokens[user_id] = mint_token(self.shop.settings.jwt_secret, user_id)
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, user_id: str = "u-1") -> tuple[int, Any]:
        """GET through the gateway: ``(status, decoded JSON or text)``."""
        async with self.http.get(self.shop.gateway_url + path, headers=self.headers(user_id)) as r:
            return r.status, await _body(r)

    async def direct(self, service: str, path: str, method: str = "GET") -> Any:
        """Call the first instance of ``service`` directly (a back-office read)."""
        async with self.http.request(method, self.shop.url(service) + path) as reply:
            reply.raise_for_status()
            return await reply.json()

    async def place(
        self,
        user_id: str,
        lines: list[dict[str, Any]],
        *,
        flow: str | None = None,
        key: str | None = None,
        attempts: int = 60,
    ) -> tuple[int, Any]:
        """POST /web/api/orders with an Idempotency-Key, retrying (same key) while the
        system answers 5xx or not at all — what a well-behaved client does."""
        key = key or uuid.uuid4().hex
        body: dict[str, Any] = {"lines": lines}
        if flow is not None:
            body["flow"] = flow
        headers = {**self.headers(user_id), "Idempotency-Key": key}
        url = self.shop.gateway_url + "/web/api/orders"
        last: tuple[int, Any] = (0, None)
        for _ in range(attempts):
            try:
                async with self.http.post(url, json=body, headers=headers) as reply:
                    last = reply.status, await _body(reply)
                    if reply.status < 500 and reply.status not in (409, 429):
                        return last
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = (0, repr(exc))
            await asyncio.sleep(0.25)
        return last

    async def order(self, order_id: str) -> dict[str, Any]:
        """The order as the orders service reports it (authoritative, not the read model)."""
        result: dict[str, Any] = await self.direct("orders", f"/orders/{order_id}")
        return result

    async def settle(self, placed: list[Placed], *, within: float = 90.0) -> list[Placed]:
        """Wait until every order is CONFIRMED or CANCELLED (or ``within`` seconds pass);
        returns those still not final."""
        deadline = time.monotonic() + within
        pending = list(placed)
        while pending and time.monotonic() < deadline:
            still = []
            for item in pending:
                try:
                    found = await self.order(item.order_id)
                except aiohttp.ClientError:
                    still.append(item)
                    continue
                item.status, item.reason = found["status"], found.get("reason")
                if item.status not in FINAL:
                    still.append(item)
            pending = still
            if pending:
                await asyncio.sleep(0.2)
        return pending

    async def stock(self) -> dict[str, int]:
        """Available units per product."""
        found: dict[str, int] = (await self.direct("inventory", "/stock"))["available"]
        return found

    async def ledger(self) -> dict[str, Any]:
        """The payment provider's view of the money."""
        result: dict[str, Any] = await self.direct("payment-provider", "/v1/ledger")
        return result


async def _body(reply: aiohttp.ClientResponse) -> Any:
    if reply.content_type == "application/json":
        return await reply.json()
    return await reply.text()


def expected_stock(before: dict[str, int], confirmed: list[Placed]) -> dict[str, int]:
    """Stock after ``confirmed`` orders took their lines (cancelled ones gave theirs back)."""
    after = dict(before)
    for order in confirmed:
        for line in order.lines:
            after[line["product_id"]] -= line["quantity"]
    return after


def assert_conserved(
    placed: list[Placed], before: dict[str, int], after: dict[str, int], ledger: dict[str, Any]
) -> None:
    """Stock and money invariants: every order final; stock taken = confirmed lines; money
    captured at the provider = confirmed totals, at most one capture per order, nothing
    captured for a cancelled order."""
    assert [p.order_id for p in placed if p.status not in FINAL] == []
    confirmed = [p for p in placed if p.status == "CONFIRMED"]
    assert after == expected_stock(before, confirmed)
    by_id = {p.order_id: p for p in placed}
    captured = {
        c["key"]: c for c in ledger["charges"] if c["state"] == "captured" and c["key"] in by_id
    }
    assert set(captured) == {p.order_id for p in confirmed}, "captures != confirmed orders"
    for key, charge in captured.items():
        assert charge["amount_cents"] == by_id[key].total_cents
    keys = [c["key"] for c in ledger["charges"]]
    assert len(keys) == len(set(keys)), "a charge key appears twice at the provider"
