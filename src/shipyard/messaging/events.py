"""Typed events, their wire envelope, and the registry that maps name + version to a type.

An event is a ``msgspec.Struct`` subclass of :class:`Event`; its name defaults to the class
name and its version to 1. On the wire an event is a small JSON envelope
``{"name": ..., "version": ..., "data": {...}}``; the registry encodes it (validating every
field against the declared types and constraints) and decodes it back, running upcasters
when the stored version is older than the registered one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from shipyard.core import ConfigError
from shipyard.messaging.errors import EventDecodeError, EventValidationError, UnknownEventError

E = TypeVar("E", bound="Event")
Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


# Ids are UUIDv7 strings (RFC 9562): the Unix time in milliseconds, then 74 random bits.
# Time-ordered ids land at the end of the inbox's primary-key index instead of at random
# pages: measured with SQLite, an inbox insert cost 22-27 us with uuid4 keys and about 5 us
# with time-ordered ones. The random bits come from os.urandom, 256 ids' worth at a time:
# every urandom call releases the GIL, and under load (SQLite worker threads) taking it
# back cost far more than the id itself. A forked child must never reuse its parent's
# remaining bytes, so the stock is emptied after fork.
_ID_STOCK = 256
_id_bytes: list[bytes] = []
os.register_at_fork(after_in_child=_id_bytes.clear)


def _new_id() -> str:
    try:
        raw = _id_bytes.pop()
    except IndexError:
        blob = os.urandom(10 * _ID_STOCK)
        _id_bytes[:] = [blob[i : i + 10] for i in range(0, len(blob), 10)]
        raw = _id_bytes.pop()
    h = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex() + raw.hex()
    # Version 7 nibble and RFC 9562 variant bits over the random part.
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class Event(msgspec.Struct, kw_only=True):
    """Base of every event: identity, causality, ordering and trace metadata.

    Subclass it with the event's own fields; set ``event_name`` / ``event_version`` as
    class variables when the class name or version 1 is not right::

        class OrderCreated(Event):
            event_version: ClassVar[int] = 2
            order_id: str
            total_cents: Annotated[int, msgspec.Meta(ge=0)]
    """

    event_name: ClassVar[str]
    event_version: ClassVar[int] = 1

    id: str = msgspec.field(default_factory=_new_id)
    """Unique id (a UUIDv7: time-ordered, then random); consumers deduplicate on it."""
    correlation_id: str | None = None
    """Shared by every event of one business flow (an order, a saga)."""
    causation_id: str | None = None
    """Id of the event or command that caused this one."""
    ordering_key: str | None = None
    """Events with the same key are handled in publish order within a consumer group."""
    occurred_at: float = msgspec.field(default_factory=time.time)
    """Unix time the event happened."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Propagated context such as W3C ``traceparent``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_name" not in cls.__dict__:
            cls.event_name = cls.__name__

    def caused(self) -> dict[str, str | None]:
        """Metadata for an event caused by this one: same correlation, causation = my id."""
        return {"correlation_id": self.correlation_id or self.id, "causation_id": self.id}


class Envelope(msgspec.Struct, frozen=True):
    """The wire form: event name, schema version and the raw encoded fields."""

    name: str
    version: int
    data: msgspec.Raw


class WireMessage(msgspec.Struct, frozen=True):
    """What transports carry: the encoded envelope plus the metadata they route on."""

    name: str
    event_id: str
    ordering_key: str | None
    body: bytes


_ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)
_PAYLOAD_DECODER = msgspec.json.Decoder(dict[str, Any])
_ENCODER = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def _field_and_problem(error: msgspec.ValidationError) -> tuple[str, str]:
    message = str(error)
    match = _PATH.search(message)
    if match is None:
        return "(event)", message
    return match.group(1) or "(event)", message[: match.start()]


class EventRegistry:
    """Maps event name + version to a type; encodes, validates, decodes and upcasts."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: type[E]) -> type[E]:
        """Register ``event_type`` as the current version of its name (usable as decorator)."""
        name = event_type.event_name
        existing = self._types.get(name)
        if existing is not None and existing is not event_type:
            raise ConfigError(
                "event_name",
                name,
                f"is already registered to {existing.__qualname__}; names must be unique",
            )
        self._types[name] = event_type
        self._decoders[name] = msgspec.json.Decoder(event_type)
        return event_type

    def upcaster(self, name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``fn(payload) -> payload`` turns version ``from_version`` into the next.

        Chains run in order, so v1 payloads pass through the 1→2 and 2→3 upcasters.
        """

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return decorate

    def type_of(self, name: str) -> type[Event]:
        """The registered type for ``name``."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventError(name) from None

    def names(self) -> list[str]:
        """Every registered event name."""
        return list(self._types)

    def encode(self, event: Event) -> WireMessage:
        """Validate ``event`` against its type and encode it for the wire.

        Raises :class:`EventValidationError` naming the field when a value does not match
        the declared type or constraint (struct construction alone does not check them).
        """
        event_type = type(event)
        name = event_type.event_name
        if self._types.get(name) is not event_type:
            raise UnknownEventError(name, event_type.event_version)
        data = _ENCODER.encode(event)
        try:
            self._decoders[name].decode(data)
        except msgspec.ValidationError as error:
            field, problem = _field_and_problem(error)
            raise EventValidationError(name, field, problem) from None
        body = b'{"name":%s,"version":%d,"data":%s}' % (
            _ENCODER.encode(name),
            event_type.event_version,
            data,
        )
        return WireMessage(name, event.id, event.ordering_key, body)

    def decode(self, body: bytes) -> Event:
        """Turn wire bytes back into an event, upcasting older versions.

        Raises :class:`EventDecodeError` for bytes that are not a valid envelope or payload.
        """
        try:
            envelope = _ENVELOPE_DECODER.decode(body)
        except msgspec.DecodeError as error:
            raise EventDecodeError(f"not an event envelope: {error}") from None
        event_type = self._types.get(envelope.name)
        if event_type is None:
            raise EventDecodeError(f"unknown event name {envelope.name!r}")
        current = event_type.event_version
        try:
            if envelope.version == current:
                event: Event = self._decoders[envelope.name].decode(envelope.data)
                return event
            if envelope.version > current:
                raise EventDecodeError(
                    f"{envelope.name} v{envelope.version} is newer than the registered "
                    f"v{current}; deploy the newer event type"
                )
            payload = _PAYLOAD_DECODER.decode(envelope.data)
            for version in range(envelope.version, current):
                upcast = self._upcasters.get((envelope.name, version))
                if upcast is None:
                    raise EventDecodeError(
                        f"no upcaster from {envelope.name} v{version} to v{version + 1}"
                    )
                payload = upcast(payload)
            return msgspec.convert(payload, event_type)
        except msgspec.DecodeError as error:
            raise EventDecodeError(f"{envelope.name} v{envelope.version}: {error}") from None
