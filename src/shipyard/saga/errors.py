"""Errors raised by sagas: bad definitions, unknown sagas, held semantic locks."""

from __future__ import annotations

from shipyard.core import ShipyardError


class SagaError(ShipyardError):
    """Root of the saga errors."""


class SagaDefinitionError(SagaError, ValueError):
    """A saga definition is malformed; ``step`` names the offending step (if any)."""

    def __init__(self, saga: str, step: str | None, problem: str) -> None:
        self.saga = saga
        self.step = step
        where = f"saga {saga!r}" if step is None else f"saga {saga!r}, step {step!r}"
        super().__init__(f"{where}: {problem}")


class SagaNotFound(SagaError, LookupError):
    """No saga with this id is in the saga log."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(
            f"no saga with id {saga_id!r} in the saga log; list them with `shipyard saga list`"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownSagaError(SagaError, LookupError):
    """The orchestrator has no definition for this saga name (and version)."""

    def __init__(self, name: str, version: int | None, known: list[str]) -> None:
        self.name = name
        self.version = version
        which = name if version is None else f"{name} v{version}"
        listing = ", ".join(known) or "none"
        super().__init__(
            f"no saga definition {which!r} is registered (registered: {listing}); register "
            "it with orchestrator.register(definition) — keep old versions registered until "
            "their sagas finish"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SagaVersionMismatchError(SagaError, RuntimeError):
    """A definition changed without a new version while sagas of it were in flight."""

    def __init__(self, name: str, version: int, stored: str, registered: str) -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"saga {name!r} v{version} was started with definition {stored[:12]} but the "
            f"registered v{version} is {registered[:12]}; give the changed definition a new "
            "version and keep the old one registered until its sagas finish"
        )


class SemanticLockError(SagaError, RuntimeError):
    """A resource is held pending by another saga (semantic lock); retry or reject."""

    def __init__(self, resource: str, holder: str) -> None:
        self.resource = resource
        self.holder = holder
        super().__init__(
            f"{resource} is pending in saga {holder!r}; wait until that saga finishes "
            "(or compensates) and try again"
        )


class ReplyTimeoutError(SagaError, TimeoutError):
    """A command step's participant did not reply before the step's timeout; the attempt
    counts as failed (the step's retry sends the command again, or the saga compensates)."""

    def __init__(self, saga_id: str, step: str, attempt: int, timeout: float) -> None:
        self.saga_id = saga_id
        self.step = step
        self.attempt = attempt
        self.timeout = timeout
        super().__init__(
            f"no reply to step {step!r} (attempt {attempt}) of saga {saga_id!r} within "
            f"{timeout:g}s; a later reply to this attempt is ignored — check that the "
            "participant consumes the command and publishes its StepReply, or raise timeout="
        )


class LeaseLostError(SagaError, RuntimeError):
    """Another orchestrator took the saga over (this one's lease had expired); this one
    stops driving it. Renew leases in time with ``start_heartbeat()``."""

    def __init__(self, saga_ids: list[str], owner: str | None) -> None:
        self.saga_ids = saga_ids
        self.owner = owner
        super().__init__(
            f"orchestrator {owner!r} no longer holds the lease of saga(s) "
            f"{', '.join(map(repr, saga_ids))}: another orchestrator took them over after "
            "the lease expired; keep leases renewed with start_heartbeat() or raise lease="
        )
