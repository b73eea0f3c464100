"""The users service: customer accounts; publishes ``UserCreated`` / ``UserUpdated``.

Every change and its event commit in one transaction (the outbox), so the copies other
services keep (orders' user cache) never miss one.
"""

from __future__ import annotations

import uuid

import msgspec
from examples.shop import seed
from examples.shop.contracts import UserCreated, UserUpdated
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, body, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service
from shipyard.storage import Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " email TEXT NOT NULL, version BIGINT NOT NULL)",
)


class NewUser(msgspec.Struct):
    """``POST /users`` body."""

    name: str
    email: str


def build(settings: ShopSettings) -> Service:
    """The users service."""
    runtime: ShopRuntime

    async def seed_users(tx: Transaction) -> None:
        if await tx.fetchone("SELECT 1 FROM users LIMIT 1") is not None:
            return
        for customer in seed.CUSTOMERS:
            await tx.execute(
                "INSERT INTO users (id, name, email, version) VALUES (?, ?, ?, 1)",
                customer.id,
                customer.name,
                customer.email,
            )
            await runtime.outbox.add(
                tx,
                UserCreated(
                    user_id=customer.id,
                    name=customer.name,
                    email=customer.email,
                    ordering_key=customer.id,
                ),
            )

    runtime = ShopRuntime("users", settings, schema=SCHEMA, seed=seed_users, publishes=True)

    async def listing(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT id, name, email, version FROM users ORDER BY id")
        return JSON({"users": [_user(row) for row in rows]})

    async def one(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT id, name, email, version FROM users WHERE id = ?",
                request.path_params["user_id"],
            )
        if row is None:
            return error(404, "no such user")
        return JSON(_user(row))

    async def create(request: Request) -> JSON:
        try:
            new = await body(request, NewUser)
        except ValueError as exc:
            return error(422, str(exc))
        user_id = f"u-{uuid.uuid4().hex[:10]}"
        async with runtime.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO users (id, name, email, version) VALUES (?, ?, ?, 1)",
                user_id,
                new.name,
                new.email,
            )
            await runtime.outbox.add(
                tx,
                UserCreated(user_id=user_id, name=new.name, email=new.email, ordering_key=user_id),
            )
        return JSON({"id": user_id, "name": new.name, "email": new.email, "version": 1}, 201)

    async def update(request: Request) -> JSON:
        user_id = request.path_params["user_id"]
        try:
            change = await body(request, NewUser)
        except ValueError as exc:
            return error(422, str(exc))
        async with runtime.db.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE users SET name = ?, email = ?, version = version + 1 WHERE id = ?"
                " RETURNING version",
                change.name,
                change.email,
                user_id,
            )
            if row is None:
                return error(404, "no such user")
            version = int(row[0])
            await runtime.outbox.add(
                tx,
                UserUpdated(
                    user_id=user_id,
                    name=change.name,
                    email=change.email,
                    version=version,
                    ordering_key=user_id,
                ),
            )
        return JSON({"id": user_id, "name": change.name, "email": change.email, "version": version})

    app = Starlette(
        routes=[
            Route("/users", listing, methods=["GET"]),
            Route("/users", create, methods=["POST"]),
            Route("/users/{user_id}", one, methods=["GET"]),
            Route("/users/{user_id}", update, methods=["PUT"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)


def _user(row: tuple[object, ...]) -> dict[str, object]:
    return {"id": row[0], "name": row[1], "email": row[2], "version": row[3]}
