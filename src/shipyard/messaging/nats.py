"""NATS JetStream transport: one stream per bus, one durable pull consumer per group.

Subjects are ``<stream>.<event name>``. Each message carries the event id as
``Nats-Msg-Id``, so JetStream drops a republish of the same event inside its duplicate
window (a relay that crashed before marking rows sent). A group's consumer acknowledges
each handled message explicitly (``AckPolicy.EXPLICIT``: several processes share a group
as competing consumers, and an ack-all from one would also acknowledge what another has
fetched but not handled); a message not acked within ``ack_wait`` (or nak'ed when a
consumer closes) is delivered again, and its delivery count is reported as
``Delivery.attempt``.

Both directions speak the JetStream wire protocol over plain NATS subscriptions rather
than nats-py's per-call helpers, which cost a future, a JSON parse and a timer per
message (publishing) and linger on every pull (consuming):

- A publish batch shares one reply subject; the batch is confirmed once JetStream has
  acknowledged every message, and fails on the first error.
- A subscription keeps one pull request outstanding on a long-lived inbox, so messages
  stream into a bounded buffer while the previous batch is being handled; ``fetch``
  takes what is buffered and tops the request up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, StreamConfig
from nats.js.errors import NotFoundError

from shipyard.core import ConfigError, validation
from shipyard.messaging.errors import TransportError
from shipyard.messaging.events import WireMessage
from shipyard.messaging.transport import Delivery, StartFrom

_KEY_HEADER = "Shipyard-Ordering-Key"
_ID_HEADER = "Nats-Msg-Id"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_NEXT = "$JS.API.CONSUMER.MSG.NEXT.{stream}.{group}"
# How long one pull request lives on the server. Renewing it costs one small message per
# period on an idle stream; a request lost with the connection is replaced on reconnect,
# or at the latest this long (plus _PULL_GRACE) after it was sent.
_PULL_EXPIRES = 5.0
_PULL_GRACE = 1.0
# The buffer holds up to this many fetches' worth of messages (fetched or on their way),
# and never more than half of what the server lets a consumer have unacknowledged.
_WINDOW_FETCHES = 2
_MAX_ACK_PENDING = 10_000
_CLOSE_TIMEOUT = 1.0
_ACK = b"+ACK"


class _PublishBatch:
    """Counts JetStream's acks for one ``publish`` call."""

    __slots__ = ("done", "error", "waiting")

    def __init__(self, size: int) -> None:
        self.waiting = size
        self.error: str | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class NatsTransport:
    """Events in a JetStream stream: ``nats://127.0.0.1:4222``."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "shipyard",
        ack_wait: float = 30.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 2.0,
    ) -> None:
        if not _NAME.match(stream):
            raise ConfigError("stream", stream, "must be letters, digits, '_' or '-'")
        self._url = url
        self.stream = stream
        self._ack_wait = validation.positive("ack_wait", ack_wait)
        self._publish_timeout = validation.positive("publish_timeout", publish_timeout)
        self._connect_timeout = validation.positive("connect_timeout", connect_timeout)
        self._reconnect_wait = validation.positive("reconnect_wait", reconnect_wait)
        self._nc: Any = None
        self._js: Any = None
        self._ack_prefix = ""
        self._batches: dict[str, _PublishBatch] = {}
        self._batch_ids = itertools.count()
        self._subscriptions: set[NatsSubscription] = set()

    @property
    def url(self) -> str:
        """The ``nats://`` URL."""
        return self._url

    async def connect(self) -> None:
        """Connect and create the stream if needed (``open_transport`` does this)."""
        try:
            self._nc = await nats.connect(
                self._url,
                connect_timeout=self._connect_timeout,
                # Keep reconnecting forever: the outbox holds events meanwhile.
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                reconnect_time_wait=self._reconnect_wait,
                reconnected_cb=self._reconnected,
            )
        except (TimeoutError, OSError, NatsError) as error:
            raise TransportError(f"cannot connect to NATS at {self._url}: {error}") from error
        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"]))
        self._ack_prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._ack_prefix + "*", cb=self._publish_acked)

    async def _reconnected(self) -> None:
        # The server forgot our pull requests with the old connection.
        for subscription in self._subscriptions:
            subscription._forget_pull()

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        """Publish ``messages`` pipelined and wait for every JetStream ack."""
        if self._js is None or self._nc.is_closed:
            raise TransportError(f"NATS transport {self._url} is not connected")
        if not messages:
            return
        batch_id = str(next(self._batch_ids))
        batch = self._batches[batch_id] = _PublishBatch(len(messages))
        reply = self._ack_prefix + batch_id
        prefix = self.stream + "."
        publish = self._nc.publish
        try:
            for message in messages:
                headers = {_ID_HEADER: message.event_id}
                if message.ordering_key is not None:
                    headers[_KEY_HEADER] = message.ordering_key
                # One connection writes in order, so the stream keeps the publish order
                # while the acks are awaited together.
                await publish(prefix + message.name, message.body, reply, headers)
            await asyncio.wait_for(batch.done, self._publish_timeout)
        except (TimeoutError, NatsError, OSError) as error:
            raise TransportError(
                f"JetStream did not confirm publishing to {self.stream!r} at {self._url}: "
                f"{error!r}; the outbox keeps the events and retries"
            ) from error
        finally:
            del self._batches[batch_id]
        if batch.error is not None:
            raise TransportError(
                f"JetStream refused a message for {self.stream!r} at {self._url}: "
                f"{batch.error}; the outbox keeps the events and retries"
            )

    async def _publish_acked(self, msg: Any) -> None:
        batch = self._batches.get(msg.subject[len(self._ack_prefix) :])
        if batch is None or batch.done.done():
            return  # a late ack of a batch that already failed or timed out
        data = msg.data
        if not data:
            # A status instead of an ack: 503 = no stream listens on the subject.
            status = (msg.headers or {}).get(Header.STATUS, "?")
            batch.error = f"status {status} (is the stream {self.stream!r} there?)"
        elif b'"error"' in data:
            error = json.loads(data).get("error")
            if error:
                batch.error = str(error.get("description", error))
        if batch.error is not None:
            batch.done.set_result(None)
            return
        batch.waiting -= 1
        if not batch.waiting:
            batch.done.set_result(None)

    async def subscribe(
        self, group: str, *, start_from: StartFrom = "beginning"
    ) -> NatsSubscription:
        """Bind ``group``'s durable pull consumer, creating it at ``start_from`` if new."""
        if self._js is None:
            raise TransportError(f"NATS transport {self._url} is not connected")
        if not _NAME.match(group):
            raise ConfigError("group", group, "must be letters, digits, '_' or '-' for NATS")
        config = ConsumerConfig(
            durable_name=group,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if start_from == "beginning" else DeliverPolicy.NEW,
            ack_wait=self._ack_wait,
            max_ack_pending=_MAX_ACK_PENDING,
        )
        try:
            try:
                existing = await self._js.consumer_info(self.stream, group)
            except NotFoundError:
                await self._js.add_consumer(self.stream, config)
            else:
                _check_ack_policy(existing.config, self.stream, group)
            subscription = NatsSubscription(self, self.stream, group)
            await subscription._open()
        except (TimeoutError, NatsError) as error:
            raise TransportError(f"cannot bind consumer {group!r}: {error!r}") from error
        return subscription

    async def delete_stream(self) -> None:
        """Delete the stream and every consumer on it (tests, teardown)."""
        if self._js is not None:
            await self._js.delete_stream(self.stream)

    async def close(self) -> None:
        """Close the connection."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def _check_ack_policy(config: ConsumerConfig, stream: str, group: str) -> None:
    """Refuse a consumer made with another ack policy (an earlier version used ack-all):
    JetStream cannot change it in place, and deleting it would lose the group's place."""
    if config.ack_policy != AckPolicy.EXPLICIT:
        raise TransportError(
            f"JetStream consumer {group!r} on stream {stream!r} has ack_policy="
            f"{config.ack_policy}; Shipyard needs 'explicit' (an ack-all from one process "
            f"acknowledges what others fetched). Once no process consumes the group, delete "
            f"it (`nats consumer rm {stream} {group}`) and subscribe again: it restarts "
            f"from start_from"
        )


def _stream_sequence_and_attempt(reply: str) -> tuple[int, int] | None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
    # newer servers insert <domain>.<account hash> after ACK and may append a token.
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    if len(tokens) < base + 7 or tokens[1] != "ACK":
        return None
    return int(tokens[base + 3]), int(tokens[base + 2])


class NatsSubscription:
    """A group's durable pull consumer, fed by one outstanding pull request."""

    def __init__(self, transport: NatsTransport, stream: str, group: str) -> None:
        self._transport = transport
        self._nc: Any = transport._nc
        self._js: Any = transport._js
        self._stream = stream
        self._group = group
        self._next = _NEXT.format(stream=stream, group=group)
        self._inbox: str = self._nc.new_inbox()
        self._sub: Any = None
        self._ready: deque[Delivery] = deque()
        # Received but unacknowledged messages (buffered or handed out), nak'ed on close
        # so they come back at once instead of after ack_wait.
        self._unacked: dict[int, Any] = {}
        self._arrived = asyncio.Event()
        # What the outstanding pull request may still deliver, and when it surely ended.
        self._asked = 0
        self._asked_until = 0.0
        self._window = 0
        self._failure: str | None = None
        self._closed = False

    async def _open(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._receive)
        self._transport._subscriptions.add(self)

    def _forget_pull(self) -> None:
        self._asked = 0
        self._arrived.set()

    async def _pull(self) -> None:
        """Ask for messages up to the window unless a request is still outstanding."""
        if self._asked:
            if asyncio.get_running_loop().time() < self._asked_until:
                return
            self._asked = 0  # lost with a connection; its end never reached us
        wanted = self._window - len(self._ready)
        if wanted <= 0 or self._closed or self._failure is not None:
            return
        request = b'{"batch":%d,"expires":%d}' % (wanted, int(_PULL_EXPIRES * 1e9))
        self._asked = wanted
        self._asked_until = asyncio.get_running_loop().time() + _PULL_EXPIRES + _PULL_GRACE
        await self._nc.publish(self._next, request, self._inbox)

    async def _receive(self, msg: Any) -> None:
        reply = msg.reply
        if not reply:
            self._status(msg.headers or {})
            return
        parsed = _stream_sequence_and_attempt(reply)
        if parsed is None:
            return
        sequence, attempt = parsed
        headers = msg.headers or {}
        name = msg.subject.partition(".")[2]
        event_id = headers.get(_ID_HEADER) or f"nats-{sequence}"
        message = WireMessage(name, event_id, headers.get(_KEY_HEADER), msg.data)
        self._ready.append(Delivery(message, sequence, attempt, msg))
        self._unacked[sequence] = msg
        self._arrived.set()
        if self._asked:
            self._asked -= 1
            if not self._asked:
                await self._pull()  # keep them flowing while the consumer works

    def _status(self, headers: dict[Any, str]) -> None:
        status = headers.get(Header.STATUS)
        if status is None or status == "100":
            return  # not from JetStream, or an idle heartbeat
        # 404 no messages / 408 request expired: the request is over, the next fetch renews
        # it. Anything else (409 consumer deleted, limits exceeded, 503 no JetStream) fails
        # the next fetch, and the bus re-subscribes with backoff.
        self._asked = 0
        if status not in ("404", "408"):
            self._failure = f"{status} {headers.get(Header.DESCRIPTION, '')}".strip()
        self._arrived.set()

    async def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Up to ``max_messages`` buffered deliveries, waiting at most ``max_wait`` for one."""
        self._window = min(_WINDOW_FETCHES * max_messages, _MAX_ACK_PENDING // 2)
        ready = self._ready
        try:
            if not ready:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + max_wait
                while not ready:
                    if self._failure is not None:
                        raise TransportError(f"JetStream ended the pull: {self._failure}")
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self._closed:
                        return []
                    self._arrived.clear()
                    await self._pull()
                    if ready:
                        break
                    # Wake at the latest when the request must have ended, to renew it.
                    wait = min(remaining, max(self._asked_until - loop.time(), 0.0))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), wait)
            count = min(max_messages, len(ready))
            deliveries = [ready.popleft() for _ in range(count)]
            await self._pull()
        except NatsError as error:
            raise TransportError(f"cannot pull from JetStream: {error!r}") from error
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge each of ``deliveries`` (the acks leave in one write)."""
        publish = self._nc.publish
        unacked = self._unacked
        try:
            for delivery in deliveries:
                await publish(delivery.handle.reply, _ACK)
                unacked.pop(delivery.position, None)
        except NatsError as error:
            raise TransportError(f"cannot ack on JetStream: {error!r}") from error

    async def _stop_pulling(self) -> None:
        # Our pull request must be gone from the server before close() naks: nats-server
        # 2.9 loses a nak'ed message (and delivers the next one twice) when it tries to
        # redeliver it while the only waiting requests have no subscriber.
        # 1. Drain: the server stops feeding our inbox, and what it already sent reaches
        #    _receive, so it is nak'ed with the rest.
        await self._sub.drain()
        # 2. The server registers pull requests in order, so once a later one is answered
        #    ours is registered too (a message it hands over is nak'ed with the rest).
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def answer(msg: Any) -> None:
            parsed = _stream_sequence_and_attempt(msg.reply) if msg.reply else None
            if parsed is not None:
                self._unacked[parsed[0]] = msg
            if not answered.done():
                answered.set_result(None)

        probe = self._nc.new_inbox()
        probe_sub = await self._nc.subscribe(probe, cb=answer)
        try:
            await self._nc.publish(self._next, b'{"batch":1,"no_wait":true}', probe)
            await answered
        finally:
            await probe_sub.unsubscribe()
        # 3. Reading the consumer's info drops waiting requests that have no subscriber.
        await self._js.consumer_info(self._stream, self._group)

    async def close(self) -> None:
        """Nak what was not acked and stop pulling; the durable consumer stays on the server."""
        if self._closed:
            return
        self._closed = True
        self._transport._subscriptions.discard(self)
        try:
            await asyncio.wait_for(self._stop_pulling(), _CLOSE_TIMEOUT)
        except (TimeoutError, NatsError):
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        unacked, self._unacked = self._unacked, {}
        self._ready.clear()
        with contextlib.suppress(NatsError):
            for msg in unacked.values():
                await msg.nak()
        self._arrived.set()
