"""Talking to upstreams: resolvers, a round-robin pick, and a pooled keep-alive client.

The client works at the ``asyncio.Protocol`` level with httptools' response parser: no
streams, no per-request objects beyond a future, and connections are reused across
requests (and across routes that target the same instance). A caller driven by callbacks
(the proxy's fast path) passes a ``Waiter`` to ``UpstreamConnection.start`` instead and
gets no future at all: it is told, once, when the response head has arrived or the
request failed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import httptools

from shipyard.gateway.deadlines import Deadlines
from shipyard.gateway.errors import StaleConnectionError, UpstreamError, UpstreamTimeoutError
from shipyard.gateway.filters import Header


class Address(Protocol):
    """Anything with an address and a port (``shipyard.discovery.Instance`` is one)."""

    @property
    def address(self) -> str:
        """Host name or IP."""

    @property
    def port(self) -> int:
        """TCP port."""


class UpstreamResolver(Protocol):
    """Turns a service name into its instances; ``shipyard.discovery.Discovery`` fits."""

    async def instances(self, service: str) -> Sequence[Address]:
        """The instances currently serving ``service`` (may be empty)."""


class StaticResolver:
    """A resolver over a fixed map of service name → instances (from the config)."""

    def __init__(self, services: Mapping[str, Sequence[Address]]) -> None:
        self._services = {name: tuple(found) for name, found in services.items()}

    async def instances(self, service: str) -> Sequence[Address]:
        """The configured instances of ``service`` (empty if unknown)."""
        return self._services.get(service, ())


class RoundRobin:
    """Each instance in turn (a counter per service)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, instances: Sequence[Address], skip: Address | None = None) -> Address:
        """The next instance, avoiding ``skip`` (the one that just failed) when possible."""
        index = self._next % len(instances)
        self._next = index + 1
        chosen = instances[index]
        if skip is not None and len(instances) > 1 and _same(chosen, skip):
            chosen = instances[(index + 1) % len(instances)]
            self._next = index + 2
        return chosen


def _same(a: Address, b: Address) -> bool:
    return a.address == b.address and a.port == b.port


class Waiter(Protocol):
    """Told what became of a request sent with ``UpstreamConnection.start`` (once)."""

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """The response head has arrived (the body too when ``conn.complete``; else it is
        still coming and ``conn.wait_done()`` gives its end)."""

    def upstream_failed(self, conn: UpstreamConnection, error: Exception) -> None:
        """No response head: ``StaleConnectionError`` (never reached the upstream),
        ``UpstreamTimeoutError`` or ``UpstreamError``. The connection is closed."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; one request at a time."""

    __slots__ = (
        "_deadline",
        "_pool",
        "caller",
        "chunks",
        "complete",
        "done",
        "head",
        "head_only",
        "headed",
        "headers",
        "keep_alive",
        "key",
        "open",
        "parser",
        "received",
        "request",
        "reused",
        "sink",
        "status",
        "ticket",
        "transport",
        "waiter",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.key: tuple[str, int] = ("", 0)
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.headers: list[Header] = []
        self.chunks: list[bytes] = []
        self.status = 0
        self.complete = False
        self.keep_alive = True
        self.head_only = False
        self.sink: Callable[[bytes], None] | None = None
        self._deadline = 0
        """The tick of the pending deadline in the pool's ``Deadlines`` (0: none)."""
        self.reused = False
        """Taken from the idle pool (so the upstream may have closed it meanwhile)."""
        self.received = False
        """Any byte of the current response has arrived."""
        self.headed = False
        """The current response's head has arrived."""
        self.waiter: Waiter | None = None
        """Who ``start`` tells about the response head (cleared once told)."""
        self.caller: Any = None
        self.ticket = 0
        self.request = b""
        """The waiter's own per-request state (who asked, its breaker ticket, the bytes
        sent): kept here so a callback-driven request needs no object of its own."""

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.complete and self.head_only:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("upstream sent malformed HTTP"))
            return
        waiter = self.waiter
        if waiter is not None and self.headed:
            # Told here, after the parser returned, never from inside its callbacks: the
            # waiter may release this connection and the next request may reuse it.
            self.waiter = None
            if self.complete:
                waiter.upstream_ready(self)
            else:
                # One loop turn first, as a future's callback would get: a body arriving
                # right behind its head is still relayed whole rather than streamed.
                self._pool.loop.call_soon(waiter.upstream_ready, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        waiter = self.waiter
        if (self.head is not None and not self.head.done()) or waiter is not None:
            self._cancel_timer()
            # A reused connection closed before any byte of the answer came back: the
            # upstream closed it idle, as we wrote. It never processed the request.
            error = (
                StaleConnectionError("upstream closed an idle connection as it was reused")
                if self.reused and not self.received
                else UpstreamError("upstream closed the connection")
            )
            if waiter is not None:
                self.waiter = None
                waiter.upstream_failed(self, error)
            else:
                assert self.head is not None
                self.head.set_exception(error)
        elif not self.complete and self.headed and not self._framed():
            # A response without Content-Length or chunking ends when the connection does.
            self.on_message_complete()
        elif not self.complete and self.done is not None and not self.done.done():
            self.done.set_exception(UpstreamError("upstream closed mid-response"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def _framed(self) -> bool:
        """The response says where it ends (a length, chunking, or a status without a
        body); otherwise it ends when the connection does. Asked only then."""
        status = self.status
        if status in (204, 304) or 100 <= status < 200:
            return True
        return any(n in (b"content-length", b"transfer-encoding") for n, _ in self.headers)

    def on_headers_complete(self) -> None:
        self.headed = True
        parser = self.parser
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        if self.head_only:
            # httptools cannot be told a response to HEAD has no body, so the connection
            # is not reused (its parser would wait for Content-Length bytes).
            self.keep_alive = False
            self.complete = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        if self._deadline:  # _cancel_timer, inlined: this is every response
            self._pool.deadlines.remove(self, self._deadline)
            self._deadline = 0
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- use

    def send(self, data: bytes, timeout: float, head_only: bool) -> asyncio.Future[None]:
        """Write one request; the future resolves when the response head has arrived."""
        self.head = head = self._pool.loop.create_future()
        self.waiter = None
        self._write(data, timeout, head_only)
        return head

    def start(self, data: bytes, timeout: float, head_only: bool, waiter: Waiter) -> None:
        """``send`` without a future: ``waiter`` is told when the head has arrived or the
        request failed (timeouts included)."""
        self.head = None
        self.waiter = waiter
        self._write(data, timeout, head_only)

    def _write(self, data: bytes, timeout: float, head_only: bool) -> None:
        assert self.transport is not None
        self.done = None
        self.headers = []
        self.chunks = []
        self.complete = False
        self.headed = False
        self.sink = None
        self.received = False
        self.head_only = head_only
        self._deadline = self._pool.deadlines.add(self, timeout)
        self.transport.write(data)

    def wait_done(self) -> asyncio.Future[None]:
        """A future for the end of the response body (for streaming)."""
        if self.done is None:
            self.done = self._pool.loop.create_future()
            if self.complete:
                self.done.set_result(None)
        return self.done

    def finish(self) -> None:
        """The caller has taken the whole response: reuse the connection or close it.

        Releasing is the caller's job, not the parser's, so a connection never goes back
        to the pool while its response is still being read."""
        self.sink = None
        if self.complete and self.keep_alive and self.open:
            self._pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (it will not be reused)."""
        self._cancel_timer()
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._deadline:
            self._pool.deadlines.remove(self, self._deadline)
            self._deadline = 0

    def expire(self, seconds: float) -> None:
        """The response did not complete in time (called by the pool's ``Deadlines``)."""
        self._deadline = 0
        self._fail(UpstreamTimeoutError(f"upstream did not answer within {seconds:g}s"))

    def _fail(self, error: Exception) -> None:
        for future in (self.head, self.done):
            if future is not None and not future.done():
                future.set_exception(error)
        self.complete = True
        self.open = False
        if self.transport is not None:
            self.transport.abort()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.upstream_failed(self, error)


class UpstreamPool:
    """Idle keep-alive connections per upstream instance, reused LIFO."""

    def __init__(self, *, max_idle_per_instance: int = 256) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        """Response deadlines of this pool's requests."""
        self._idle: dict[tuple[str, int], deque[UpstreamConnection]] = {}
        self._max_idle = max_idle_per_instance

    def take_idle(self, address: str, port: int) -> UpstreamConnection | None:
        """An idle open connection to ``address:port``, if there is one (no await)."""
        idle = self._idle.get((address, port))
        while idle:
            conn = idle.pop()
            if conn.open:
                conn.reused = True
                return conn
        return None

    async def acquire(self, address: str, port: int, connect_timeout: float) -> UpstreamConnection:
        """An open connection to ``address:port``: an idle one, or a new one."""
        conn = self.take_idle(address, port)
        if conn is not None:
            return conn
        return await self.connect(address, port, connect_timeout)

    async def connect(self, address: str, port: int, connect_timeout: float) -> UpstreamConnection:
        """A new connection to ``address:port`` (never one from the pool)."""
        try:
            # wait_for (not asyncio.timeout): it works without a current Task.
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), address, port),
                connect_timeout,
            )
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"connecting to {address}:{port} timed out") from exc
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to {address}:{port}: {exc.strerror or exc}"
            ) from exc
        protocol.key = (address, port)
        return protocol

    async def request(
        self, address: str, port: int, data: bytes, within: float, head_only: bool
    ) -> UpstreamConnection:
        """Send one request; resolves when the response head has arrived.

        A pooled connection the upstream closed just as we reused it fails before a byte
        comes back; the request never reached the upstream, so it is sent once more on a
        fresh connection whatever its method (nothing can have happened twice).
        """
        conn = self.take_idle(address, port)
        if conn is not None:
            try:
                await conn.send(data, within, head_only)
                return conn
            except StaleConnectionError:
                pass
            except BaseException:
                conn.close()
                raise
        return await self.send_fresh(address, port, data, within, head_only)

    async def send_fresh(
        self, address: str, port: int, data: bytes, within: float, head_only: bool
    ) -> UpstreamConnection:
        """``request`` on a new connection (never one from the pool)."""
        conn = await self.connect(address, port, within)
        try:
            await conn.send(data, within, head_only)
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose response is complete, for reuse."""
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
