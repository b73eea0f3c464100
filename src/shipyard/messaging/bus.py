"""The event bus: consumer groups with an inbox, retries and dead letters.

``bus.subscribe("OrderCreated", group="inventory", handler=reserve)`` registers a handler;
``await bus.start()`` runs one consumer per group. Each handler runs as
``handler(event, tx)`` inside a transaction of the consumer's own database, in which the
event id was first inserted into the inbox (unique per group + event id): a redelivered
event finds its id there and is skipped, so the handler's database effects apply once.

Fast path: a fetched batch is handled in ONE transaction (one inbox insert for the batch,
handlers in order), which is what makes the embedded SQLite setup fast. If any handler
raises, that transaction rolls back and the batch is handled again one event per
transaction: events with the same ordering key in order, different keys concurrently,
each failure retried with backoff and, after ``max_attempts``, stored as a dead letter so
the rest keep flowing. Handlers therefore must keep non-database side effects idempotent
(they may run again after a rollback — the usual at-least-once contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, overload

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, cancel_and_wait, get_logger, validation
from shipyard.messaging.deadletters import record_dead_letter
from shipyard.messaging.errors import MessagingError
from shipyard.messaging.events import Event, EventRegistry, WireMessage
from shipyard.messaging.schema import INBOX, install_schema
from shipyard.messaging.transport import Delivery, StartFrom, Subscription, Transport
from shipyard.resilience.backoff import Backoff
from shipyard.storage import Database, Transaction

Handler = Callable[[Any, Transaction], Awaitable[None]]
"""``async def handler(event, tx) -> None``; ``tx`` is the consumer database transaction."""
H = TypeVar("H", bound=Handler)

_log = get_logger("shipyard.messaging.bus")
_MAX_ERROR_CHARS = 4000

# The strictest transport decides: a NATS JetStream durable consumer name must not contain
# ".", "*", ">", whitespace or path separators, and a name that works on SQLite but not on
# NATS would only fail once a service moves to NATS (in a background loop, retried
# forever). So every transport gets the portable subset.
_GROUP_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
GROUP_NAME_RULE = "1 to 128 characters: letters, digits, '-' and '_' (e.g. 'orders-user-cache')"
"""The consumer-group names every transport accepts."""


def check_group_name(group: str) -> str:
    """``group`` if it is a portable consumer-group name, else :class:`ConfigError` naming it."""
    if not isinstance(group, str) or _GROUP_NAME.fullmatch(group) is None:
        raise ConfigError("group", group, f"must be {GROUP_NAME_RULE}")
    return group


@dataclass
class _Group:
    name: str
    start_from: StartFrom
    handlers: dict[str, Handler] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    # Set after the first subscribe attempt, so start() returns once "now" means now.
    bound: asyncio.Event = field(default_factory=asyncio.Event)


class _HandlerFailed(Exception):
    """Internal: a handler raised inside the batch transaction (forces the rollback)."""

    def __init__(self, event_id: str, error: Exception) -> None:
        self.event_id = event_id
        self.error = error


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error)).strip()
    return text[-_MAX_ERROR_CHARS:]


_Work = tuple[WireMessage, Event, Handler]


class EventBus:
    """Consumer groups over a :class:`~shipyard.messaging.Transport`, deduplicated by an inbox.

    ``db`` is the CONSUMING service's database (inbox and dead letters live there).
    ``start_from`` is where a brand-new group begins ("beginning" or "now"); a group that
    already has a position resumes from it.
    """

    def __init__(
        self,
        transport: Transport,
        db: Database,
        registry: EventRegistry,
        *,
        max_attempts: int = 5,
        retry_base_delay: float = 0.1,
        retry_max_delay: float = 30.0,
        batch_size: int = 100,
        start_from: StartFrom = "beginning",
        fetch_wait: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._transport = transport
        self._db = db
        self.registry = registry
        self._max_attempts = validation.at_least("max_attempts", max_attempts, 1)
        self._backoff = Backoff.checked(
            "retry_base_delay", retry_base_delay, "retry_max_delay", retry_max_delay
        )
        self._batch_size = validation.at_least("batch_size", batch_size, 1)
        validation.one_of("start_from", start_from, ("beginning", "now"))
        self._start_from: StartFrom = start_from
        self._fetch_wait = validation.positive("fetch_wait", fetch_wait)
        self._clock = clock
        self._groups: dict[str, _Group] = {}
        self.handled = 0
        """Events whose handler committed (duplicates skipped by the inbox do not count)."""
        self.dead_lettered = 0
        """Events this bus stored as dead letters."""

    # -- subscribing -------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        event: type[Event] | str,
        *,
        group: str,
        handler: None = None,
        start_from: StartFrom | None = None,
    ) -> Callable[[H], H]: ...

    @overload
    def subscribe(
        self,
        event: type[Event] | str,
        *,
        group: str,
        handler: H,
        start_from: StartFrom | None = None,
    ) -> H: ...

    def subscribe(
        self,
        event: type[Event] | str,
        *,
        group: str,
        handler: H | None = None,
        start_from: StartFrom | None = None,
    ) -> H | Callable[[H], H]:
        """Handle ``event`` (a type or name) in consumer ``group``; usable as a decorator."""
        check_group_name(group)  # fail now, not in the consumer loop on some transports
        name = event if isinstance(event, str) else event.event_name
        self.registry.type_of(name)  # fail now, not on the first delivery
        if start_from is not None:
            validation.one_of("start_from", start_from, ("beginning", "now"))
        existing = self._groups.get(group)
        if existing is not None and existing.task is not None:
            raise MessagingError(
                f"group {group!r} is already consuming; subscribe before bus.start()"
            )
        if existing is not None and name in existing.handlers:
            raise MessagingError(f"group {group!r} already has a handler for {name!r}")
        if existing is None:
            existing = self._groups[group] = _Group(group, start_from or self._start_from)
        chosen = existing

        def register(fn: H) -> H:
            chosen.handlers[name] = fn
            return fn

        return register if handler is None else register(handler)

    # -- publishing (outside a transaction) ---------------------------------------------

    async def publish(self, *events: Event) -> None:
        """Publish straight to the transport (no outbox: lost if the process dies first).

        Prefer :class:`~shipyard.messaging.Outbox` when the event describes a database
        change; this is for events with no such change, and for tools.
        """
        await self._transport.publish([self.registry.encode(event) for event in events])

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the inbox/dead-letter tables and start one consumer task per group.

        Returns once every group has tried to bind to the transport, so a group starting
        from "now" sees every event published after ``start()`` returns (if the transport
        is down the consumers keep retrying in the background).
        """
        await install_schema(self._db)
        started = []
        for group in self._groups.values():
            if group.task is None or group.task.done():
                group.bound.clear()
                group.task = asyncio.create_task(
                    self._consume(group), name=f"shipyard-consumer-{group.name}"
                )
                started.append(group.bound.wait())
        await asyncio.gather(*started)

    async def stop(self) -> None:
        """Cancel the consumers; anything not yet acknowledged is delivered again later."""
        tasks = [g.task for g in self._groups.values() if g.task is not None]
        for group in self._groups.values():
            group.task = None
        await cancel_and_wait(*tasks)

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _consume(self, group: _Group) -> None:
        failures = 0
        while True:
            subscription: Subscription | None = None
            try:
                try:
                    subscription = await self._transport.subscribe(
                        group.name, start_from=group.start_from
                    )
                finally:
                    group.bound.set()
                while True:
                    deliveries = await subscription.fetch(self._batch_size, self._fetch_wait)
                    if deliveries:
                        await self.handle_batch(group.name, deliveries)
                        await subscription.ack(deliveries)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Re-subscribing rewinds to the committed position, so nothing fetched
                # but unacknowledged is skipped.
                failures += 1
                delay = self._backoff.delay(failures)
                _log.warning(
                    "consumer group failed; re-subscribing",
                    group=group.name,
                    error=repr(error),
                    failures=failures,
                    retry_in=round(delay, 3),
                )
                await self._clock.sleep(delay)
            finally:
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.close()

    # -- handling ----------------------------------------------------------------------

    async def handle_batch(self, group: str, deliveries: Sequence[Delivery]) -> None:
        """Handle fetched ``deliveries`` for ``group`` (the consumer loop calls this)."""
        handlers = self._groups[group].handlers
        work: list[_Work] = []
        dead: list[tuple[WireMessage, str, int]] = []
        for delivery in deliveries:
            message = delivery.message
            handler = handlers.get(message.name)
            if handler is None:
                continue
            if delivery.attempt > self._max_attempts:
                # Delivered this often without an ack: the consumer died while handling it
                # (a poison message that crashes the process); stop feeding it in.
                reason = (
                    f"delivered {delivery.attempt} times without being acknowledged "
                    "(the consumer crashed or timed out while handling it)"
                )
                dead.append((message, reason, delivery.attempt - 1))
                continue
            try:
                event = self.registry.decode(message.body)
            except Exception as error:
                dead.append((message, f"cannot decode: {error}", 0))
                continue
            work.append((message, event, handler))
        if not work and not dead:
            return
        try:
            await self._handle_together(group, work, dead)
            return
        except _HandlerFailed as failure:
            first_failure = failure
        await self._store_dead(group, dead)
        await self._handle_one_by_one(group, work, first_failure)

    async def _claim(self, tx: Transaction, group: str, event_ids: Sequence[str]) -> set[str]:
        # One statement claims the whole batch; RETURNING lists the ids not seen before.
        now = self._clock.now()
        rows = ",".join(["(?, ?, ?)"] * len(event_ids))
        params: list[object] = []
        for event_id in event_ids:
            params += (group, event_id, now)
        claimed = await tx.fetch(
            f"INSERT INTO {INBOX} (group_name, event_id, handled_at) VALUES {rows}"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            *params,
        )
        return {row[0] for row in claimed}

    async def _handle_together(
        self, group: str, work: list[_Work], dead: list[tuple[WireMessage, str, int]]
    ) -> None:
        handled = 0
        async with self._db.transaction() as tx:
            now = self._clock.now()
            for message, error, attempts in dead:
                await record_dead_letter(tx, group, message, error, attempts, now)
            fresh: set[str] = set()
            if work:
                fresh = await self._claim(tx, group, [m.event_id for m, _, _ in work])
            for message, event, handler in work:
                if message.event_id not in fresh:
                    continue
                # A duplicate inside one batch is claimed once and handled once.
                fresh.discard(message.event_id)
                try:
                    await handler(event, tx)
                except Exception as error:
                    raise _HandlerFailed(message.event_id, error) from error
                handled += 1
        self.handled += handled
        self.dead_lettered += len(dead)

    async def _store_dead(self, group: str, dead: list[tuple[WireMessage, str, int]]) -> None:
        if not dead:
            return
        async with self._db.transaction() as tx:
            now = self._clock.now()
            for message, error, attempts in dead:
                await record_dead_letter(tx, group, message, error, attempts, now)
        self.dead_lettered += len(dead)

    async def _handle_one_by_one(
        self, group: str, work: list[_Work], first_failure: _HandlerFailed
    ) -> None:
        chains: dict[object, list[_Work]] = {}
        for item in work:
            message = item[0]
            # Events without a key have no order to keep: each is its own chain.
            key: object = message.ordering_key
            if key is None:
                key = (None, message.event_id)
            chains.setdefault(key, []).append(item)

        async def run_chain(chain: list[_Work]) -> None:
            for message, event, handler in chain:
                failed = first_failure if message.event_id == first_failure.event_id else None
                await self._handle_alone(group, message, event, handler, failed)

        await asyncio.gather(*(run_chain(chain) for chain in chains.values()))

    async def _handle_alone(
        self,
        group: str,
        message: WireMessage,
        event: Event,
        handler: Handler,
        failed: _HandlerFailed | None,
    ) -> None:
        attempts = 0 if failed is None else 1
        last_error: Exception | None = None if failed is None else failed.error
        while attempts < self._max_attempts:
            if attempts:
                await self._clock.sleep(self._backoff.delay(attempts))
            attempts += 1
            try:
                async with self._db.transaction() as tx:
                    if not await self._claim(tx, group, (message.event_id,)):
                        return  # handled already (a redelivery)
                    await handler(event, tx)
                self.handled += 1
                return
            except Exception as error:
                last_error = error
                _log.warning(
                    "event handler failed",
                    group=group,
                    event_name=message.name,
                    event_id=message.event_id,
                    attempt=attempts,
                    max_attempts=self._max_attempts,
                    error=repr(error),
                )
        assert last_error is not None
        _log.error(
            "event moved to dead letters",
            group=group,
            event_name=message.name,
            event_id=message.event_id,
            attempts=attempts,
        )
        async with self._db.transaction() as tx:
            await record_dead_letter(
                tx, group, message, _describe(last_error), attempts, self._clock.now()
            )
        self.dead_lettered += 1
