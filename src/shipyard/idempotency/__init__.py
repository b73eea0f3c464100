"""Idempotency keys: retried POSTs and PATCHes run once and replay the first response.

store = SqlIdempotencyStore(await open_database("sqlite:///var/orders.db"))
await store.create_table()
app = Starlette(routes=..., middleware=[
    Middleware(IdempotencyMiddleware, store=store, principal=header_principal("X-User-Id")),
])

When the database opens later, in the app's lifespan, pass an opener instead:
``store=lambda: SqlIdempotencyStore(db)`` (or an async function) is called once the app
has started.

Stores: :class:`MemoryIdempotencyStore` (one process, tests), :class:`SqlIdempotencyStore`
(the service's SQLite or PostgreSQL database), :class:`RedisIdempotencyStore` (shared).
"""

from shipyard.idempotency.errors import IdempotencyError, InvalidIdempotencyKeyError
from shipyard.idempotency.fingerprint import (
    MAX_KEY_LENGTH,
    parse_key,
    request_fingerprint,
    scope_key,
)
from shipyard.idempotency.memory import MemoryIdempotencyStore
from shipyard.idempotency.middleware import (
    DEFAULT_EXCLUDED_HEADERS,
    ConcurrentMode,
    IdempotencyMiddleware,
    Principal,
    StoreOpener,
    anonymous,
    header_principal,
)
from shipyard.idempotency.sql import SqlIdempotencyStore
from shipyard.idempotency.store import (
    Headers,
    IdempotencyRecord,
    IdempotencyStore,
    Lease,
    RecordState,
    StoredResponse,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shipyard.idempotency.redis import RedisIdempotencyStore


def __getattr__(name: str) -> object:
    # redis is an optional extra: import its store only when it is asked for.
    if name == "RedisIdempotencyStore":
        from shipyard.idempotency.redis import RedisIdempotencyStore

        return RedisIdempotencyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # the middleware
    "IdempotencyMiddleware",
    "ConcurrentMode",
    "Principal",
    "StoreOpener",
    "anonymous",
    "header_principal",
    "DEFAULT_EXCLUDED_HEADERS",
    # the store port and its records
    "IdempotencyStore",
    "Lease",
    "IdempotencyRecord",
    "RecordState",
    "StoredResponse",
    "Headers",
    # stores
    "MemoryIdempotencyStore",
    "SqlIdempotencyStore",
    "RedisIdempotencyStore",
    # keys and fingerprints
    "parse_key",
    "scope_key",
    "request_fingerprint",
    "MAX_KEY_LENGTH",
    # errors
    "IdempotencyError",
    "InvalidIdempotencyKeyError",
]
