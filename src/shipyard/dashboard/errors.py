"""The dashboard's errors."""

from __future__ import annotations

from collections.abc import Iterable

from shipyard.core import ShipyardError


class UnknownInstanceError(ShipyardError, KeyError):
    """A kill or restart named an instance the process control does not manage."""

    def __init__(self, instance_id: str, known: Iterable[str]) -> None:
        self.instance_id = instance_id
        self.known = sorted(known)
        super().__init__(instance_id)

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return (
            f"no instance {self.instance_id!r} under process control; "
            f"use one of the ids in the snapshot's processes ({known})"
        )


class SourceUnavailable(ShipyardError, ConnectionError):
    """A data source (registry, instance, saga API) could not be read; the message names
    the URL and the reason. The dashboard shows it and keeps polling."""
