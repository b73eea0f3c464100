"""CQRS: typed commands through a command bus with middleware, queries over read models.

Works with event sourcing (command handlers load and save aggregates, projections feed the
read models) or without it: a command handler writes an ordinary table plus its outbox
events in one transaction, and a query handler reads a denormalised table.
"""

from shipyard.cqrs.commands import CommandBus, CommandContext, CommandHandler, Middleware, Next
from shipyard.cqrs.errors import (
    CommandRejectedError,
    CommandValidationError,
    CqrsError,
    NoHandlerError,
    NotAuthorizedError,
)
from shipyard.cqrs.messages import Command, Query
from shipyard.cqrs.middleware import (
    Authorize,
    Idempotent,
    LogCommands,
    Transactional,
    install_schema,
)
from shipyard.cqrs.queries import QueryBus, QueryHandler

__all__ = [
    # messages
    "Command",
    "Query",
    # command side
    "CommandBus",
    "CommandContext",
    "CommandHandler",
    "Middleware",
    "Next",
    # middleware
    "LogCommands",
    "Authorize",
    "Transactional",
    "Idempotent",
    "install_schema",
    # query side
    "QueryBus",
    "QueryHandler",
    # errors
    "CqrsError",
    "CommandValidationError",
    "CommandRejectedError",
    "NotAuthorizedError",
    "NoHandlerError",
]
