"""Aggregates: state derived from events, new events raised by command methods.

::

    class Order(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.lines: list[str] = []

        def add_line(self, sku: str) -> None:          # a command method
            if len(self.lines) >= 50:
                raise ValueError("an order holds at most 50 lines")
            self._raise(LineAdded(sku=sku))

        @applies(LineAdded)                            # state changes only here
        def _line_added(self, event: LineAdded) -> None:
            self.lines.append(event.sku)

The event-type → method table is built once per class (in ``__init_subclass__``), so
applying an event is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from shipyard.messaging import Event

F = TypeVar("F", bound=Callable[..., None])
_MARK = "__shipyard_applies__"


def applies(event_type: type[Event]) -> Callable[[F], F]:
    """Mark an aggregate method as the one that applies ``event_type`` to the state."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, event_type)
        return fn

    return mark


class Aggregate:
    """Base class of event-sourced aggregates.

    ``version`` counts every event applied, pending ones included; the repository appends
    the pending events expecting ``version - len(pending_events)``. ``category`` (default:
    the class name) prefixes the stream id: ``Order`` ``42`` lives in stream ``Order-42``.
    Snapshots hold :meth:`snapshot_state`; bump ``snapshot_schema`` when it changes shape
    so old snapshots are ignored rather than misread.
    """

    category: ClassVar[str]
    snapshot_schema: ClassVar[int] = 1
    _appliers: ClassVar[dict[type[Event], Callable[[Any, Any], None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "category" not in cls.__dict__:
            cls.category = cls.__name__
        appliers: dict[type[Event], Callable[[Any, Any], None]] = {}
        for klass in reversed(cls.__mro__):  # subclasses override their bases
            for member in vars(klass).values():
                event_type = getattr(member, _MARK, None)
                if event_type is not None:
                    appliers[event_type] = member
        cls._appliers = appliers

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[Event] = []

    @classmethod
    def stream_id_for(cls, id: str) -> str:
        """The stream that holds the events of aggregate ``id``."""
        return f"{cls.category}-{id}"

    @property
    def stream_id(self) -> str:
        """This aggregate's stream id."""
        return f"{self.category}-{self.id}"

    @property
    def pending_events(self) -> tuple[Event, ...]:
        """Events raised since the aggregate was loaded or last saved."""
        return tuple(self._pending)

    def _raise(self, event: Event) -> None:
        """Record a new event: apply it to the state and queue it for saving."""
        self.apply(event)
        self._pending.append(event)

    def apply(self, event: Event) -> None:
        """Apply one event (events without an ``@applies`` method change only the version)."""
        applier = self._appliers.get(type(event))
        if applier is not None:
            applier(self, event)
        self.version += 1

    def _take_pending(self) -> list[Event]:
        pending, self._pending = self._pending, []
        return pending

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot stores: public attributes except ``id`` and ``version``.

        Override (with :meth:`restore_state`) when the state holds types msgspec cannot
        encode as JSON.
        """
        return {
            key: value
            for key, value in vars(self).items()
            if not key.startswith("_") and key not in ("id", "version")
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Put the state from :meth:`snapshot_state` back."""
        for key, value in state.items():
            setattr(self, key, value)
