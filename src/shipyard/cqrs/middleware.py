"""Command-bus middleware: logging, authorization, a transaction, idempotency by command id.

A typical chain, outermost first::

    CommandBus(middleware=[LogCommands(), Authorize(may_run), Transactional(db), Idempotent()])

``Idempotent`` records each command id with its result in the SAME transaction as the
handler's writes, so a resent command either finds the record (and gets the first result
back, decoded from JSON) or runs — never both, never twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger
from shipyard.cqrs.commands import CommandContext, Next
from shipyard.cqrs.errors import CqrsError, NotAuthorizedError
from shipyard.storage import Database

HANDLED_COMMANDS = "cqrs_handled_commands"
_BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA"}


async def install_schema(db: Database) -> None:
    """Create the table :class:`Idempotent` records command ids in (idempotent)."""
    async with db.transaction() as tx:
        await tx.execute(
            f"""CREATE TABLE IF NOT EXISTS {HANDLED_COMMANDS} (
                command_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                result {_BLOB[db.dialect]} NOT NULL,
                handled_at DOUBLE PRECISION NOT NULL
            )"""
        )


class LogCommands:
    """Logs every command: name, id, principal, outcome and duration."""

    def __init__(self, *, logger: str = "shipyard.cqrs", clock: Clock = SYSTEM_CLOCK) -> None:
        self._log = get_logger(logger)
        self._clock = clock

    async def __call__(self, command: Any, context: CommandContext, next: Next) -> Any:
        start = self._clock.monotonic()
        fields = {
            "command": command.command_name,
            "command_id": command.command_id,
            "principal": repr(context.principal),
        }
        try:
            result = await next(command, context)
        except Exception as error:
            took = round((self._clock.monotonic() - start) * 1000, 3)
            self._log.warning("command failed", **fields, error=repr(error), ms=took)
            raise
        took = round((self._clock.monotonic() - start) * 1000, 3)
        self._log.info("command handled", **fields, ms=took)
        return result


AuthorizationCheck = Callable[[Any, CommandContext], "bool | Awaitable[bool]"]


class Authorize:
    """Runs ``check(command, context)`` (sync or async); ``False`` raises ``NotAuthorizedError``."""

    def __init__(self, check: AuthorizationCheck) -> None:
        if not callable(check):
            raise ConfigError("check", check, "must be a callable (command, context) -> bool")
        self._check = check

    async def __call__(self, command: Any, context: CommandContext, next: Next) -> Any:
        allowed = self._check(command, context)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            raise NotAuthorizedError(command.command_name, context.principal)
        return await next(command, context)


class Transactional:
    """Opens a transaction of ``db`` around the rest of the chain (``context.tx``).

    The handler writes its table rows (and its outbox events) through ``context.tx``; they
    commit together when the handler returns, and roll back if anything raises.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __call__(self, command: Any, context: CommandContext, next: Next) -> Any:
        async with self._db.transaction() as tx:
            context.tx = tx
            try:
                return await next(command, context)
            finally:
                context.tx = None


class Idempotent:
    """Runs each ``command_id`` once; a duplicate gets the recorded result (as JSON values).

    Needs :class:`Transactional` earlier in the chain and :func:`install_schema` run once.
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._decoder = msgspec.json.Decoder()
        self._encoder = msgspec.json.Encoder()

    async def __call__(self, command: Any, context: CommandContext, next: Next) -> Any:
        tx = context.tx
        if tx is None:
            raise CqrsError("Idempotent needs Transactional(db) before it in the middleware list")
        row = await tx.fetchone(
            f"SELECT result FROM {HANDLED_COMMANDS} WHERE command_id = ?", command.command_id
        )
        if row is not None:
            return self._decoder.decode(bytes(row[0]))
        result = await next(command, context)
        await tx.execute(
            f"INSERT INTO {HANDLED_COMMANDS} (command_id, name, result, handled_at)"
            " VALUES (?, ?, ?, ?)",
            command.command_id,
            command.command_name,
            self._encoder.encode(result),
            self._clock.now(),
        )
        return result
