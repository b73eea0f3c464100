"""Errors raised by the command and query buses."""

from __future__ import annotations

from shipyard.core import ShipyardError


class CqrsError(ShipyardError):
    """Root of the errors the CQRS package raises."""


class NoHandlerError(CqrsError, LookupError):
    """No handler is registered for this command or query type."""

    def __init__(self, kind: str, name: str) -> None:
        self.name = name
        super().__init__(f"no handler for {kind} {name!r}; register one with bus.register()")


class CommandValidationError(CqrsError, ValueError):
    """A command or query does not match its declared field types or constraints."""

    def __init__(self, name: str, field: str, problem: str) -> None:
        self.name = name
        self.field = field
        self.problem = problem
        super().__init__(f"{name} is invalid at field {field!r}: {problem}; fix it and resend")


class CommandRejectedError(CqrsError, ValueError):
    """A handler refused the command under a business rule (raise it from handlers)."""


class NotAuthorizedError(CqrsError, PermissionError):
    """The authorization hook refused the command for this principal."""

    def __init__(self, name: str, principal: object) -> None:
        self.name = name
        self.principal = principal
        super().__init__(
            f"{principal!r} may not run {name}; ask for the permission or use another account"
        )
