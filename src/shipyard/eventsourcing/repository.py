"""``Repository``: load aggregates from their streams (via snapshots), save their new events.

``save`` appends the pending events with the version the aggregate was loaded at, so a
concurrent writer makes it fail with :class:`ConcurrencyError` and write nothing; a retry
wrapper reloads and runs the command again::

    retry = Retry(retry_on=ConcurrencyError, give_up_on=None)

    async def rename(order_id: str, name: str) -> None:
        order = await orders.load(order_id)
        order.rename(name)
        await orders.save(order)

    await retry.call(rename, "42", "gift")

In the same transaction as the events, ``save`` stores a snapshot every ``snapshot_every``
events and adds the events to the messaging ``outbox``, so they reach the bus exactly when
they are committed. Concurrent saves share transactions (group commit, see the store).

Inside a transaction that is already open — typically an event-bus handler ``(event, tx)``
whose bus uses the event store's database — pass ``tx=``: the load reads in ``tx`` and the
save appends in it, so the inbox row, the new events, the snapshot and the outbox rows
commit (or roll back) together::

    @bus.subscribe(PaymentCharged, group="orders")
    async def confirm(event: PaymentCharged, tx: Transaction) -> None:
        order = await orders.load(event.order_id, tx=tx)
        order.confirm()
        await orders.save(order, tx=tx)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from shipyard.core import validation
from shipyard.eventsourcing.aggregate import Aggregate
from shipyard.eventsourcing.errors import AggregateNotFoundError, UnregisteredEventError
from shipyard.eventsourcing.store import (
    EVENTS,
    Commit,
    EventStore,
    NewEvent,
    Snapshot,
    StoredEvent,
    load_in,
)
from shipyard.messaging import Event, EventRegistry, Outbox, UnknownEventError, WireMessage
from shipyard.storage import Transaction

A = TypeVar("A", bound=Aggregate)

_STATE_DECODER = msgspec.json.Decoder(dict[str, Any])
_ENCODER = msgspec.json.Encoder()


def decode_stored(registry: EventRegistry, stored: StoredEvent) -> Event:
    """Decode (and upcast) a stored event; an unregistered name is reported with its stream."""
    return decoder_for(registry).decode(stored)


class StoredEventDecoder:
    """Decodes stored envelopes in ONE pass per event (replay and projections are hot).

    The registry's decode reads the envelope, then the payload; here each event name gets
    a decoder of "envelope whose data is this event type", built once. An envelope of an
    older version (or one that does not fit the current type) goes through the registry,
    whose upcasters bring it up to date.
    """

    def __init__(self, registry: EventRegistry) -> None:
        self._registry = registry
        self._decoders: dict[str, tuple[int, msgspec.json.Decoder[Any]]] = {}

    def decode(self, stored: StoredEvent) -> Event:
        """The event in ``stored``; :class:`UnregisteredEventError` for an unknown name."""
        entry = self._decoders.get(stored.name)
        if entry is None:
            entry = self._build(stored)
        version, decoder = entry
        try:
            envelope = decoder.decode(stored.body)
        except msgspec.ValidationError:
            return self._registry.decode(stored.body)
        if envelope.version == version:
            event: Event = envelope.data
            return event
        return self._registry.decode(stored.body)

    def _build(self, stored: StoredEvent) -> tuple[int, msgspec.json.Decoder[Any]]:
        try:
            event_type = self._registry.type_of(stored.name)
        except UnknownEventError:
            raise UnregisteredEventError(stored.name, stored.stream_id, stored.position) from None
        envelope = msgspec.defstruct(
            f"Stored{event_type.__name__}",
            [("name", str), ("version", int), ("data", event_type)],
        )
        entry = (event_type.event_version, msgspec.json.Decoder(envelope))
        self._decoders[stored.name] = entry
        return entry


_DECODERS: weakref.WeakKeyDictionary[EventRegistry, StoredEventDecoder] = (
    weakref.WeakKeyDictionary()
)


def decoder_for(registry: EventRegistry) -> StoredEventDecoder:
    """The (cached) :class:`StoredEventDecoder` of ``registry``."""
    decoder = _DECODERS.get(registry)
    if decoder is None:
        decoder = _DECODERS[registry] = StoredEventDecoder(registry)
    return decoder


class Repository(Generic[A]):
    """Loads and saves aggregates of ``aggregate_type`` in ``store``.

    ``registry`` knows every event type of the aggregate (and the upcasters of their old
    versions); ``snapshot_every`` (``None`` = never) is how many events pass between
    snapshots; ``outbox`` publishes the saved events through the messaging relay.
    """

    def __init__(
        self,
        store: EventStore,
        aggregate_type: type[A],
        *,
        registry: EventRegistry,
        snapshot_every: int | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._store = store
        self._type = aggregate_type
        self._registry = registry
        self._every = validation.optional_positive("snapshot_every", snapshot_every)
        self._outbox = outbox
        self._kind = f"{aggregate_type.__qualname__}:{aggregate_type.snapshot_schema}"

    async def load(self, id: str, *, tx: Transaction | None = None) -> A:
        """The aggregate rebuilt from its latest snapshot and the events after it.

        With ``tx`` it is read inside that open transaction (see the module docs).
        Raises :class:`AggregateNotFoundError` when the stream has no events.
        """
        stream_id = self._type.stream_id_for(id)
        aggregate = self._type(id)
        snapshots = self._every is not None  # without: one query fewer per load
        if tx is not None:
            snapshot, events = await _load_in(tx, stream_id, snapshots)
        elif snapshots:
            snapshot, events = await self._store.load(stream_id)
        else:
            snapshot, events = None, await self._store.read_stream(stream_id)
        if snapshot is not None:
            if snapshot.kind == self._kind:
                aggregate.restore_state(_STATE_DECODER.decode(snapshot.state))
                aggregate.version = snapshot.version
            elif tx is not None:  # written by another class or schema: replay everything
                events = (await _load_in(tx, stream_id, False))[1]
            else:
                events = await self._store.read_stream(stream_id)
        elif not events:
            raise AggregateNotFoundError(stream_id)
        decode = decoder_for(self._registry).decode
        for stored in events:
            aggregate.apply(decode(stored))
        return aggregate

    async def load_many(self, ids: Sequence[str]) -> dict[str, A]:
        """Several aggregates at once (one query without snapshots); missing ids are left out.

        For batch work — reports, migrations, warming a cache — where one round trip per
        aggregate would dominate.
        """
        if self._every is not None:
            loaded = [await self.get(id) for id in ids]
            return {a.id: a for a in loaded if a is not None}
        stream_of = {self._type.stream_id_for(id): id for id in ids}
        streams = await self._store.read_streams(list(stream_of))
        decode = decoder_for(self._registry).decode
        result: dict[str, A] = {}
        for stream_id, events in streams.items():
            aggregate = self._type(stream_of[stream_id])
            for stored in events:
                aggregate.apply(decode(stored))
            result[aggregate.id] = aggregate
        return result

    async def get(self, id: str, *, tx: Transaction | None = None) -> A | None:
        """Like :meth:`load`, but ``None`` when the aggregate does not exist."""
        try:
            return await self.load(id, tx=tx)
        except AggregateNotFoundError:
            return None

    async def save(self, aggregate: A, *, tx: Transaction | None = None) -> int:
        """Append the pending events (expected version = the loaded one); returns the version.

        Raises :class:`ConcurrencyError` (nothing written, events stay pending) when the
        stream moved on since the aggregate was loaded. With ``tx`` the events, snapshot
        and outbox rows are written in that open transaction and commit with it (no group
        commit); its owner commits or rolls back.
        """
        pending = aggregate._pending
        if not pending:
            return aggregate.version
        expected = aggregate.version - len(pending)
        encode = self._registry.encode
        messages = [encode(event) for event in pending]
        new_events = [NewEvent(m.event_id, m.name, m.body) for m in messages]
        extra = self._extra(aggregate, expected, list(pending), messages)
        if tx is None:
            commit = Commit(aggregate.stream_id, new_events, expected, extra)
            version = await self._store.commit(commit)
        else:
            version = await self._store.append_in(tx, aggregate.stream_id, new_events, expected)
            if extra is not None:
                await extra(tx)
        aggregate._take_pending()
        return version

    def _extra(
        self, aggregate: A, expected: int, events: list[Event], messages: list[WireMessage]
    ) -> Any:
        snapshot = None
        every = self._every
        if every is not None and aggregate.version // every > expected // every:
            # Encoded now: the aggregate may change after save() returns.
            state = _ENCODER.encode(aggregate.snapshot_state())
            snapshot = Snapshot(aggregate.stream_id, aggregate.version, self._kind, state)
        outbox = self._outbox
        if snapshot is None and outbox is None:
            return None
        store = self._store

        async def extra(tx: Transaction) -> None:
            if snapshot is not None:
                await store.save_snapshot_in(tx, snapshot)
            if outbox is not None:
                if outbox.registry is self._registry:  # encoded alike: not twice
                    await outbox.add_encoded(tx, messages)
                else:
                    await outbox.add(tx, *events)

        return extra


async def _load_in(
    tx: Transaction, stream_id: str, with_snapshot: bool
) -> tuple[Snapshot | None, list[StoredEvent]]:
    """The stream's snapshot (when asked) and the events after it, read in ``tx``.

    The same reads as the store's ``load`` / ``read_stream``, which open their own
    transaction; the port has no variant taking the caller's one yet.
    """
    if with_snapshot:
        return await load_in(tx, stream_id)
    rows = await tx.fetch(
        f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
        " WHERE stream_id = ? ORDER BY version",
        stream_id,
    )
    return None, [StoredEvent(*row) for row in rows]
