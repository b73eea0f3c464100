"""The HTTP/1.1 front door: an ``asyncio.Protocol`` server with httptools request parsing.

Why not ASGI: at tens of thousands of requests per second the per-request cost of an ASGI
scope, receive/send coroutines and a task dominates. Here a request is parsed straight
into an ``Exchange``, queued per connection (so pipelined responses keep their order) and
answered with one ``transport.write``. Hardening lives here because it must happen before
any route or filter sees the request: size limits (413/431), malformed HTTP (400, never
forwarded), path normalisation, request ids and the real client IP.

Answering is callback-driven: the connection starts its route's chain
(``Chain.answer``) straight from the parser callback that completed the request. A
reply decided at once is written at once; a proxied request is written upstream and the
connection is resumed (``resume``) from the upstream connection's callback. Only what
must wait on something else (a JWT cache miss, a shared rate-limit store, a fresh
upstream connection, retries, streaming) runs as a coroutine, driven by ``InlineRun``
(or in a Task when the chain does not run inline), and resumes the same way.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from random import getrandbits as _random_bits
from typing import cast

import httptools

from shipyard.core.logging import get_logger
from shipyard.gateway.config import Limits
from shipyard.gateway.filters import Chain, Exchange, Pending, Reply, local_reply
from shipyard.gateway.inline import InlineRun
from shipyard.gateway.paths import BadPath, normalise_path, split_target
from shipyard.gateway.routing import NoRoute, Router
from shipyard.gateway.upstream import UpstreamConnection

_log = get_logger("shipyard.gateway")

_STATUS_LINES = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode() for s in HTTPStatus}
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Completion = Callable[[Exchange], None]
_monotonic = time.monotonic
_NONZERO_IDS = 1 | 1 << 128  # the first byte of the trace id and of the span id
_hex = binascii.b2a_hex


async def _ready(reply: Reply) -> Reply:
    """A reply already in hand, as an awaitable (for ``_later``, which streams it)."""
    return reply


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing with a status code."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Frontend:
    """A frontend at run time: its path prefix, router and completion hooks."""

    def __init__(
        self,
        name: str,
        prefix: str,
        router: Router[tuple[str, Chain]],
        completions: Sequence[Completion] = (),
    ) -> None:
        self.name = name
        self.prefix = prefix.encode()
        self.router = router
        self.completions = tuple(completions)


class Listener:
    """What one listening socket serves: frontends by prefix, limits and hardening."""

    def __init__(
        self,
        frontends: Sequence[Frontend],
        *,
        limits: Limits,
        trusted_proxies: Sequence[Network] = (),
        keepalive_timeout: float = 75.0,
        header_timeout: float = 30.0,
    ) -> None:
        self.frontends: list[Frontend] = []
        self.limits = limits
        self.trusted: tuple[Network, ...] = ()
        self.replace(frontends, limits=limits, trusted_proxies=trusted_proxies)
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.connections: set[HttpConnection] = set()
        self._id_prefix = os.urandom(6).hex().encode() + b"-"
        self._id_counter = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def replace(
        self,
        frontends: Sequence[Frontend],
        *,
        limits: Limits,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        """Serve new frontends from now on (a config reload).

        Each attribute is swapped in one assignment, between requests (single-threaded
        loop): a request already routed keeps its old chain until it completes."""
        # Longest prefix first; the empty prefix (if any) catches the rest.
        self.frontends = sorted(frontends, key=lambda f: -len(f.prefix))
        self.limits = limits
        self.trusted = tuple(trusted_proxies)

    # -- per request

    def client_ip(self, ex: Exchange) -> str:
        """The socket peer, or, behind trusted proxies, the rightmost untrusted XFF hop."""
        if not self.trusted or not self._is_trusted(ex.peer_ip):
            return ex.peer_ip
        forwarded = ex.header_map.get(b"x-forwarded-for")
        if not forwarded:
            return ex.peer_ip
        for hop in reversed(forwarded.split(b",")):
            text = hop.strip().decode("latin-1")
            try:
                if not self._is_trusted(text):
                    return str(ipaddress.ip_address(text))
            except ValueError:
                return ex.peer_ip
        return ex.peer_ip

    def _is_trusted(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.trusted)

    def route(self, ex: Exchange) -> tuple[Reply | None, Frontend | None, Chain | None]:
        """Find the frontend and chain for one request; a reply when the gateway answers
        itself (bad path, no route), else the chain to run (it is not run here)."""
        header_map = ex.header_map
        supplied = header_map.get(b"x-request-id")
        if supplied is not None and _REQUEST_ID.fullmatch(supplied):
            ex.request_id = supplied
        else:
            # A unique id: a random per-process prefix plus a counter (no syscall).
            self._id_counter += 1
            ex.request_id = self._id_prefix + b"%x" % self._id_counter
        if b"traceparent" not in header_map:
            # The edge starts the trace when the client did not, so every hop behind the
            # gateway (and its access log) shares one trace id.
            # One draw for trace and span id, hex-encoded with the dash between them in one
            # call (far cheaper than formatting ints); a bit forced in each keeps both from
            # being the invalid all-zero id.
            ids = (_random_bits(192) | _NONZERO_IDS).to_bytes(24, "little")
            traceparent = b"00-" + _hex(ids, b"-", -16) + b"-01"
            header_map[b"traceparent"] = traceparent
            ex.headers.append((b"traceparent", traceparent))
            ex.trace_id = traceparent[3:35].decode("latin-1")
        if self.trusted:
            ex.client_ip = self.client_ip(ex)
        try:
            path = normalise_path(ex.path)
        except BadPath as exc:
            return local_reply(400, f"bad request path: {exc}"), None, None
        frontend = None
        for candidate in self.frontends:
            prefix = candidate.prefix
            if not prefix:
                frontend = candidate
                break
            if path == prefix or path.startswith(prefix + b"/"):
                frontend = candidate
                path = path[len(prefix) :] or b"/"
                break
        if frontend is None:
            return local_reply(404, "no frontend serves this path"), None, None
        ex.frontend = frontend.name
        ex.path = path
        try:
            match = frontend.router.match(ex.method, path, ex.host, header_map)
        except NoRoute as miss:
            if miss.method_mismatch:
                allow = b", ".join(sorted(miss.allowed))
                return (
                    local_reply(405, "method not allowed on this route", [(b"allow", allow)]),
                    frontend,
                    None,
                )
            return local_reply(404, "no route matches this request"), frontend, None
        (ex.route, chain), ex.params, ex.upstream_path = match
        return None, frontend, chain

    # -- connection housekeeping

    def start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close idle keep-alive connections and slow (slowloris) requests periodically."""
        interval = max(0.5, min(self.keepalive_timeout, self.header_timeout) / 4)

        def sweep() -> None:
            now = loop.time()
            for conn in list(self.connections):
                conn.close_if_stale(now, self.keepalive_timeout, self.header_timeout)
            self._sweeper = loop.call_later(interval, sweep)

        self._sweeper = loop.call_later(interval, sweep)

    def stop_sweeping(self) -> None:
        """Stop the periodic sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    # Slots: thousands of idle keep-alive connections each hold one of these.
    __slots__ = (
        "_body",
        "_body_bytes",
        "_busy",
        "_chain",
        "_closing",
        "_ex",
        "_frontend",
        "_header_bytes",
        "_headers",
        "_in_request",
        "_last",
        "_limits",
        "_listener",
        "_loop",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_peer",
        "_queue",
        "_reject",
        "_started",
        "_streaming",
        "_transport",
        "_url",
    )

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._max_header_bytes = self._limits.max_header_bytes
        self._max_headers = self._limits.max_headers
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = "0.0.0.0"
        self._queue: deque[Exchange | Reply] = deque()
        self._busy = False
        self._closing = False
        self._streaming: UpstreamConnection | None = None
        self._last = 0.0
        self._started = 0.0
        self._in_request = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._reject: _Reject | None = None
        # The request being answered (one at a time; the rest wait in the queue).
        self._ex: Exchange | None = None
        self._frontend: Frontend | None = None
        self._chain: Chain | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = peer[0]
        self._last = self._loop.time()
        self._listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._listener.connections.discard(self)
        if self._streaming is not None:
            self._streaming.close()

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501, "protocol upgrades and CONNECT are not supported")
        except httptools.HttpParserError:
            reject = self._reject
            if reject is not None:
                self._fail(reject.status, reject.reason)
            else:
                self._fail(400, "malformed HTTP request")

    def pause_writing(self) -> None:
        # A slow client must not make the gateway buffer a whole streamed response.
        if self._streaming is not None and self._streaming.transport is not None:
            self._streaming.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._streaming is not None and self._streaming.transport is not None:
            self._streaming.transport.resume_reading()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_request = True
        self._started = self._last
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:
            self._reject = _Reject(414, "request target too long")
            raise self._reject

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._header_bytes = self._header_bytes + len(name) + len(value) + 4
        headers = self._headers
        if size > self._max_header_bytes:
            self._reject = _Reject(431, "request headers too large")
            raise self._reject
        if len(headers) >= self._max_headers:
            self._reject = _Reject(431, "too many request headers")
            raise self._reject
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # One pass for the three headers that matter before the body arrives.
        hosts = 0
        length: bytes | None = None
        continue_expected = False
        for name, value in self._headers:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if length is None:
                    length = value
            elif name == b"expect" and value.lower() == b"100-continue":
                continue_expected = True
        if hosts > 1 or (not hosts and self._parser.get_http_version() == "1.1"):
            self._reject = _Reject(400, "exactly one Host header is required")
            raise self._reject
        if length is None:
            return
        if int(length) > self._limits.max_body_bytes:
            self._reject = _Reject(413, "request body too large")
            raise self._reject
        if continue_expected and not self._busy and not self._queue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._reject = _Reject(413, "request body too large")
            raise self._reject
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        parser = self._parser
        url = self._url
        if url[:1] == b"/" and url.find(b"#") < 0:
            path, _, query = url.partition(b"?")  # the usual origin-form target
        else:
            try:
                path, query = split_target(url)
            except BadPath as exc:
                self._reject = _Reject(400, str(exc))
                raise self._reject from None
        body = self._body
        ex = Exchange(
            parser.get_method(),
            path,
            query,
            parser.get_http_version(),
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            self._peer,
            parser.should_keep_alive(),
            _monotonic(),
        )
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # pipelined after a request that closed the connection: never forwarded
        if self._busy:
            self._queue.append(ex)
            if len(self._queue) > 16:
                transport.pause_reading()  # pipelining limit: finish some first
            return
        self._busy = True
        try:
            # _serve and _next, inlined: this is every request.
            started = self._start(ex)
            if started is not True:
                pending = started or None
            elif self._queue:
                pending = self._next(None)
            else:
                self._busy = False
                return
            if pending is not None:
                InlineRun(self._later(pending), self._loop)
        except Exception:
            _log.exception("gateway connection handler failed")
            self._busy = False

    # -- answering

    def _fail(self, status: int, reason: str) -> None:
        """Answer a request that cannot be parsed, after any queued ones, then close."""
        if self._closing:
            return
        self._closing = True
        if self._transport is not None:
            self._transport.pause_reading()
        self._queue.append(local_reply(status, reason))
        if not self._busy:
            self._busy = True
            self._serve()

    def _serve(self) -> None:
        """Answer the queued requests; one that needs the coroutine path continues in
        ``_later``. A failure is logged and frees the connection (as InlineRun does)."""
        try:
            pending = self._next(None)
            if pending is not None:
                InlineRun(self._later(pending), self._loop)
        except Exception:
            _log.exception("gateway connection handler failed")
            self._busy = False

    def _next(self, ex: Exchange | None) -> Awaitable[Reply] | None:
        """Answer ``ex`` (if given), then queued requests in order, until one has to
        wait: returns what to await when the coroutine path must answer it, None when
        its router will call ``resume`` (or nothing is left, or the connection closed)."""
        queue = self._queue
        while True:
            if ex is None:
                if not queue:
                    self._busy = False
                    return None
                item = queue.popleft()
                if isinstance(item, Reply):
                    self._write(item, None, keep_alive=False)
                    self.close()
                    self._busy = False
                    return None
                ex = item
            started = self._start(ex)
            if started is not True:
                return started or None
            ex = None

    def _start(self, ex: Exchange) -> bool | Awaitable[Reply]:
        """Route ``ex`` and start its chain: True when it was answered and the connection
        can go on, False when not (closed, or the router resumes it), else the
        awaitable that gives its reply."""
        try:
            routed, frontend, chain = self._listener.route(ex)
            if chain is None:
                assert routed is not None
                reply = routed
            else:
                self._ex = ex
                self._frontend = frontend
                self._chain = chain
                answer = chain.answer(ex, self)
                if answer is None:
                    return False  # the router calls resume() when the reply is ready
                if not isinstance(answer, Reply):
                    return self._pending(answer)
                reply = answer
        except Exception:
            _log.exception("gateway request failed", route=ex.route)
            reply, frontend, chain = local_reply(500, "internal gateway error"), None, None
        return self._finish(ex, reply, frontend, chain)

    def _pending(self, pending: Pending) -> Awaitable[Reply]:
        chain = self._chain
        if chain is not None and not chain.runs_inline:
            # A chain that may await task-bound code gets a Task of its own.
            return asyncio.ensure_future(pending)
        return pending

    def _finish(
        self, ex: Exchange, reply: Reply, frontend: Frontend | None, chain: Chain | None
    ) -> bool | Awaitable[Reply]:
        """Send ``reply`` and run the completion hooks (as ``_start`` returns; a reply
        still streaming from upstream is handed to ``_later``)."""
        if reply.stream is not None:
            self._ex, self._frontend, self._chain = ex, frontend, chain
            return _ready(reply)
        keep_alive = ex.keep_alive and not (self._closing and not self._queue)
        self._write(reply, ex, keep_alive)
        return self._completed(ex, frontend, chain, keep_alive)

    def _completed(
        self, ex: Exchange, frontend: Frontend | None, chain: Chain | None, keep_alive: bool
    ) -> bool:
        """Run the completion hooks: True when the connection goes on (not closed)."""
        if chain is not None:
            for chain_complete in chain.completions:
                chain_complete(ex)
        if frontend is not None:
            for frontend_complete in frontend.completions:
                frontend_complete(ex)
        # Answered: an idle keep-alive connection must not hold on to the request.
        self._ex = self._frontend = self._chain = None
        if not keep_alive:
            self.close()
            self._busy = False
            return False
        if len(self._queue) == 8 and self._transport is not None:
            self._transport.resume_reading()
        return True

    async def _later(self, pending: Awaitable[Reply]) -> None:
        """The coroutine path: await the reply of the request in progress, send (or
        stream) it, and go on with the queue as ``_next`` does, awaiting here whatever
        else needs awaiting (so a run of such requests does not nest)."""
        try:
            while True:
                ex, frontend, chain = self._ex, self._frontend, self._chain
                assert ex is not None
                try:
                    reply = await pending
                except Exception:
                    _log.exception("gateway request failed", route=ex.route)
                    reply, frontend, chain = local_reply(500, "internal gateway error"), None, None
                keep_alive = ex.keep_alive and not (self._closing and not self._queue)
                if reply.stream is not None:
                    keep_alive = await self._stream(ex, reply, keep_alive)
                else:
                    self._write(reply, ex, keep_alive)
                if not self._completed(ex, frontend, chain, keep_alive):
                    return
                following = self._next(None)
                if following is None:
                    return
                pending = following
        except BaseException:
            self._busy = False
            raise

    # -- Responder: how a router answering from callbacks hands the reply back

    def resume(self, reply: Reply) -> None:
        """The reply to the request in progress is ready (called once per request)."""
        ex = self._ex
        assert ex is not None
        try:
            finished = self._finish(ex, reply, self._frontend, self._chain)
            if finished is True:
                if not self._queue:
                    self._busy = False
                    return
                pending = self._next(None)
            else:
                pending = finished or None
            if pending is not None:
                InlineRun(self._later(pending), self._loop)
        except Exception:
            _log.exception("gateway connection handler failed")
            self._busy = False

    def resume_later(self, pending: Pending) -> None:
        """The reply to the request in progress needs the coroutine path: run it."""
        InlineRun(self._later(self._pending(pending)), self._loop)

    def _head(self, reply: Reply, ex: Exchange | None, keep_alive: bool) -> list[bytes]:
        parts = [_STATUS_LINES.get(reply.status) or f"HTTP/1.1 {reply.status} \r\n".encode()]
        for name, value in reply.headers:
            parts += (name, b": ", value, b"\r\n")
        if ex is not None:
            parts += (b"x-request-id: ", ex.request_id, b"\r\n")
            if ex.version == "1.0" and keep_alive:
                parts.append(b"connection: keep-alive\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        return parts

    def _write(self, reply: Reply, ex: Exchange | None, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = reply.body
        if ex is not None and keep_alive and ex.version == "1.1" and ex.method != b"HEAD":
            # The usual answer, in one go (what _head() and the rest below would build).
            status = reply.status
            parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
            for name, value in reply.headers:
                parts += (name, b": ", value, b"\r\n")
            parts += (
                b"x-request-id: %b\r\ncontent-length: %d\r\n\r\n" % (ex.request_id, len(body)),
                body,
            )
            data = b"".join(parts)
            transport.write(data)
            ex.status = status
            ex.bytes_sent = len(data)
            return
        parts = self._head(reply, ex, keep_alive)
        head_only = ex is not None and ex.method == b"HEAD"
        if not (head_only and any(n == b"content-length" for n, _ in reply.headers)):
            parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(body)
        data = b"".join(parts)
        transport.write(data)
        if ex is not None:
            ex.status = reply.status
            ex.bytes_sent = len(data)

    async def _stream(self, ex: Exchange, reply: Reply, keep_alive: bool) -> bool:
        """Relay a response still arriving from upstream; returns whether to keep alive."""
        conn: UpstreamConnection = reply.stream
        transport = self._transport
        chunked = ex.version == "1.1"
        keep_alive = keep_alive and chunked  # HTTP/1.0 has no chunking: end by closing
        parts = self._head(reply, ex, keep_alive)
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        sent = 0

        def relay(chunk: bytes) -> None:
            nonlocal sent
            if transport is None or transport.is_closing() or not chunk:
                return
            data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
            sent += len(data)
            transport.write(data)

        ex.status = reply.status
        if transport is None or transport.is_closing():
            conn.close()
            return False
        head = b"".join(parts)
        transport.write(head)
        sent += len(head)
        for chunk in conn.chunks:
            relay(chunk)
        conn.chunks = []
        conn.sink = relay
        self._streaming = conn
        try:
            await conn.wait_done()
        except Exception:
            # The head is already sent: the only honest signal left is closing early.
            ex.bytes_sent = sent
            conn.close()
            return False
        finally:
            self._streaming = None
        if chunked and not transport.is_closing():
            transport.write(b"0\r\n\r\n")
            sent += 5
        ex.bytes_sent = sent
        conn.finish()
        return keep_alive

    def close(self) -> None:
        """Close the client connection."""
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def close_when_idle(self) -> None:
        """Close now if no request is in progress, else right after its response."""
        if self._busy or self._in_request:
            self._closing = True
        else:
            self.close()

    def close_if_stale(self, now: float, keepalive_timeout: float, header_timeout: float) -> None:
        """Close an idle keep-alive connection or one dribbling a request too slowly."""
        if self._busy:
            return
        if self._in_request:
            if now - self._started > header_timeout:
                self.close()
        elif now - self._last > keepalive_timeout:
            self.close()
