"""The query bus: query handlers answer from read models, inside a read-only transaction.

Handlers are ``async def handler(query, tx) -> result``. The transaction is
``db.transaction(readonly=True)`` (SQLite read connections that run beside the writer,
PostgreSQL ``READ ONLY``), so a query handler that tries to write fails at once instead of
quietly turning a read into a write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from shipyard.core import ConfigError
from shipyard.cqrs.errors import NoHandlerError
from shipyard.cqrs.messages import Query, Validator
from shipyard.storage import Database, Transaction

Q = TypeVar("Q", bound=Query)
QueryHandler = Callable[[Any, Transaction], Awaitable[Any]]
H = TypeVar("H", bound=QueryHandler)


class QueryBus:
    """Routes each query to its handler, reading ``db`` (the service's read models)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._handlers: dict[type[Query], tuple[QueryHandler, Validator]] = {}

    @overload
    def register(self, query_type: type[Q], handler: None = None) -> Callable[[H], H]: ...

    @overload
    def register(self, query_type: type[Q], handler: H) -> H: ...

    def register(self, query_type: type[Q], handler: H | None = None) -> H | Callable[[H], H]:
        """Answer ``query_type`` with ``async def handler(query, tx)``; a decorator without
        ``handler``."""
        if not (isinstance(query_type, type) and issubclass(query_type, Query)):
            raise ConfigError("query_type", query_type, "must be a Query subclass")
        if query_type in self._handlers:
            raise ConfigError("query_type", query_type.query_name, "already has a handler")

        def add(fn: H) -> H:
            self._handlers[query_type] = (fn, Validator(query_type))
            return fn

        return add if handler is None else add(handler)

    async def ask(self, query: Query) -> Any:
        """Validate ``query`` and return its handler's answer."""
        entry = self._handlers.get(type(query))
        if entry is None:
            raise NoHandlerError("query", type(query).__name__)
        handler, validator = entry
        validator.check(query)
        async with self._db.transaction(readonly=True) as tx:
            return await handler(query, tx)
