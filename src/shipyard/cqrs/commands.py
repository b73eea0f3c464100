"""The command bus: one handler per command type, wrapped in middleware composed once.

Middleware is ``async def mw(command, context, next) -> result``: logging, authorization,
a transaction, idempotency... Each one calls ``await next(command, context)`` to go on
(or returns/raises to stop). The chain for a command type is built when its handler is
registered, so dispatching is a dict lookup plus the calls themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from shipyard.core import ConfigError
from shipyard.cqrs.errors import NoHandlerError
from shipyard.cqrs.messages import Command, Validator
from shipyard.storage import Transaction

C = TypeVar("C", bound=Command)


@dataclass(slots=True)
class CommandContext:
    """What travels with a command: who sent it, the open transaction, free-form metadata."""

    principal: object = None
    """The caller (user, service) the authorization hook judges."""
    tx: Transaction | None = None
    """The transaction opened by :class:`~shipyard.cqrs.Transactional` (else ``None``)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Correlation ids, request ids, anything middleware wants to pass along."""


Next = Callable[[Any, CommandContext], Awaitable[Any]]
Middleware = Callable[[Any, CommandContext, Next], Awaitable[Any]]
CommandHandler = Callable[[Any, CommandContext], Awaitable[Any]]
H = TypeVar("H", bound=CommandHandler)


def _link(middleware: Middleware, next_step: Next) -> Next:
    async def step(command: Any, context: CommandContext) -> Any:
        return await middleware(command, context, next_step)

    return step


class CommandBus:
    """Routes each command to its handler through ``middleware`` (outermost first)."""

    def __init__(self, *, middleware: Sequence[Middleware] = ()) -> None:
        for index, item in enumerate(middleware):
            if not callable(item):
                raise ConfigError(f"middleware[{index}]", item, "must be an async callable")
        self._middleware = tuple(middleware)
        self._chains: dict[type[Command], Next] = {}

    @overload
    def register(self, command_type: type[C], handler: None = None) -> Callable[[H], H]: ...

    @overload
    def register(self, command_type: type[C], handler: H) -> H: ...

    def register(self, command_type: type[C], handler: H | None = None) -> H | Callable[[H], H]:
        """Handle ``command_type`` with ``async def handler(command, context)``; a decorator
        when ``handler`` is omitted."""
        if not (isinstance(command_type, type) and issubclass(command_type, Command)):
            raise ConfigError("command_type", command_type, "must be a Command subclass")
        if command_type in self._chains:
            raise ConfigError(
                "command_type", command_type.command_name, "already has a handler (one per type)"
            )

        def build(fn: H) -> H:
            validator = Validator(command_type)

            async def validated(command: Any, context: CommandContext) -> Any:
                validator.check(command)  # before any middleware side effect
                return await chain(command, context)

            chain: Next = fn
            for middleware in reversed(self._middleware):
                chain = _link(middleware, chain)
            self._chains[command_type] = validated
            return fn

        return build if handler is None else build(handler)

    async def dispatch(
        self,
        command: Command,
        *,
        principal: object = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Validate ``command`` and run it through the middleware to its handler.

        Raises :class:`~shipyard.cqrs.CommandValidationError` naming the field when it does
        not match its declared types, :class:`~shipyard.cqrs.NoHandlerError` when nobody
        handles it, and whatever the middleware or handler raise.
        """
        chain = self._chains.get(type(command))
        if chain is None:
            raise NoHandlerError("command", type(command).__name__)
        return await chain(command, CommandContext(principal, None, metadata or {}))
