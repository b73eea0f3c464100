"""``IdempotencyMiddleware``: the ``Idempotency-Key`` header as pure ASGI middleware.

Follows draft-ietf-httpapi-idempotency-key-header, with Stripe's behaviour where the draft
leaves a choice:

* only the configured methods (POST and PATCH by default) are covered, and only when the
  request carries the header (or its path is listed in ``required_paths``: then 400);
* a key is scoped to the principal (``principal(scope)``) and the route (method + path);
* the first request leases the key, runs the app and stores its response for ``ttl``;
  a repeat with the same body replays it with ``Idempotent-Replayed: true``; a repeat
  with a different method/path/query/body answers 422; a repeat while the first is still
  running answers 409 with ``Retry-After``, or with ``concurrent="wait"`` waits for it;
* nothing is stored when the app raises (the lease is released at once, so the client may
  retry), when it answers 5xx (unless ``store_server_errors``), or when the response is
  larger than ``max_response_bytes`` — those responses carry ``Idempotency-Stored: false``;
* a process that dies mid-request leaves only a lease, which expires after ``lease``
  seconds; then a retry runs the app again. Choose ``lease`` longer than the app's own
  request timeout, or a slow first request can be overtaken by a retry.

The store usually lives in a database the app's lifespan opens, after the middleware was
built. Then pass ``store=`` an opener instead — a function returning the store (or an
awaitable of it), e.g. ``store=lambda: SqlIdempotencyStore(runtime.db)``: it is called
once, when the app reports ``lifespan.startup.complete`` (a failure turns that into
``lifespan.startup.failed``), or at the first request it covers when the app is served
without a lifespan.

Stored responses keep every header the app set except hop-by-hop ones and ``Set-Cookie``
(a replay must not hand out a session minted for the first attempt); pass
``excluded_headers`` to change that. The request body is buffered (``max_request_bytes``,
413 beyond) so it can be fingerprinted, then fed to the app unchanged. A storable response
is held back until the app finishes and the store has it, so a client never sees a
response the store would contradict.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger, validation
from shipyard.idempotency.errors import InvalidIdempotencyKeyError
from shipyard.idempotency.fingerprint import parse_key, request_fingerprint, scope_key
from shipyard.idempotency.store import (
    IdempotencyRecord,
    IdempotencyStore,
    Lease,
    StoredResponse,
)

_log = get_logger("shipyard.idempotency")

Principal = Callable[[Scope], str | None]
"""Who sent the request, read from the ASGI scope; ``None`` counts as ``"anonymous"``."""
ConcurrentMode = Literal["reject", "wait"]
StoreOpener = Callable[[], IdempotencyStore | Awaitable[IdempotencyStore]]
"""Returns the store (or an awaitable of it) once the app has started; see the module docs."""

MiB = 1024 * 1024
HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
DEFAULT_EXCLUDED_HEADERS = HOP_BY_HOP_HEADERS | {b"set-cookie"}
"""Response headers that are not stored, hence not replayed."""

_KEY_HEADER = b"idempotency-key"
_REPLAYED = (b"idempotent-replayed", b"true")
_NOT_STORED = (b"idempotency-stored", b"false")


def anonymous(scope: Scope) -> str:
    """The default principal: every client shares one key space.

    Fine behind a gateway that already isolates clients; otherwise pass
    :func:`header_principal` or your own function so users cannot replay each other's keys.
    """
    return "anonymous"


def header_principal(name: str) -> Principal:
    """A principal read from request header ``name`` (e.g. ``X-User-Id`` set by the gateway).

    Only trust a header the gateway sets and strips from client requests.
    """
    wanted = name.lower().encode("latin-1")

    def principal(scope: Scope) -> str | None:
        for header, value in scope["headers"]:
            if header == wanted:
                return bytes(value).decode("latin-1")
        return None

    return principal


class _ClientGone(Exception):
    """The client disconnected before sending the whole body."""


class IdempotencyMiddleware:
    """Makes retried unsafe requests safe: see the module docs for the exact rules.

    ``app = IdempotencyMiddleware(app, store=SqlIdempotencyStore(db))`` or, with Starlette,
    ``Middleware(IdempotencyMiddleware, store=..., principal=header_principal("X-User-Id"))``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | StoreOpener,
        methods: Iterable[str] = ("POST", "PATCH"),
        principal: Principal = anonymous,
        lease: float = 30.0,
        ttl: float = 24 * 3600.0,
        concurrent: ConcurrentMode = "reject",
        retry_after: float = 1.0,
        poll_interval: float = 0.1,
        required_paths: Iterable[str] = (),
        fingerprint_headers: Iterable[str] = (),
        max_request_bytes: int = MiB,
        max_response_bytes: int = MiB,
        store_server_errors: bool = False,
        excluded_headers: Iterable[bytes] = DEFAULT_EXCLUDED_HEADERS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Wrap ``app``.

        ``lease``: seconds a first request holds its key before a retry may take it over.
        ``ttl``: seconds a response is replayed. ``concurrent``: ``"reject"`` answers a
        repeat that arrives while the first is running with 409 + ``Retry-After:
        retry_after``; ``"wait"`` holds it (checking every ``poll_interval`` seconds, and
        at once when the first finishes in this process) for up to ``lease`` seconds.
        ``required_paths``: path prefixes where the header is mandatory for ``methods``.
        ``fingerprint_headers``: request headers that must also match on a repeat.
        ``store``: the store, or a :data:`StoreOpener` called once the app has started.
        """
        self._app = app
        # A store has acquire(); anything else callable is an opener, bound at start-up.
        self._opener: StoreOpener | None = None
        # None until an opener is bound; every path that uses the store binds it first.
        self._store = cast(IdempotencyStore, None)
        if hasattr(store, "acquire"):
            self._store = cast(IdempotencyStore, store)
        elif callable(store):
            self._opener = store
        else:
            raise ConfigError(
                "store", store, "must be an IdempotencyStore or a function returning one"
            )
        self._binding = asyncio.Lock()
        self._methods = frozenset(_method(m) for m in methods)
        if not self._methods:
            raise ConfigError("methods", methods, "must name at least one HTTP method")
        self._principal = principal
        self._lease = validation.positive("lease", lease)
        self._ttl = validation.positive("ttl", ttl)
        validation.one_of("concurrent", concurrent, ("reject", "wait"))
        self._wait = concurrent == "wait"
        self._retry_after = str(math.ceil(validation.positive("retry_after", retry_after)))
        self._poll_interval = validation.positive("poll_interval", poll_interval)
        self._required_paths = tuple(_path_prefix(p) for p in required_paths)
        self._fingerprint_headers = frozenset(
            h.lower().encode("latin-1") for h in fingerprint_headers
        )
        self._max_request_bytes = validation.at_least("max_request_bytes", max_request_bytes, 0)
        self._max_response_bytes = validation.at_least("max_response_bytes", max_response_bytes, 0)
        self._store_server_errors = store_server_errors
        self._excluded = frozenset(h.lower() for h in excluded_headers)
        self._clock = clock
        # Waiters in this process are woken the moment the first request finishes instead
        # of at their next poll; polling remains for requests finished by other processes.
        self._wakeups: dict[str, asyncio.Event] = {}

    @property
    def store(self) -> IdempotencyStore | None:
        """The store (``None`` while an opener has not been called yet)."""
        return self._store

    async def bind(self) -> IdempotencyStore:
        """Call the opener now (once; later calls return the same store)."""
        async with self._binding:
            if self._store is None:
                assert self._opener is not None
                opened = self._opener()
                store = await opened if inspect.isawaitable(opened) else opened
                if not hasattr(store, "acquire"):
                    raise ConfigError("store", store, "the opener must return an IdempotencyStore")
                self._store = store
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope["method"] not in self._methods:
            if self._store is None and scope["type"] == "lifespan":
                await self._app(scope, receive, self._binding_on_startup(send))
                return
            await self._app(scope, receive, send)
            return
        if self._store is None:
            await self.bind()  # served without a lifespan: bind at the first covered request
        raw_keys = [value for name, value in scope["headers"] if name == _KEY_HEADER]
        if not raw_keys:
            if self._is_required(scope["path"]):
                reason = f"Idempotency-Key header is required for {scope['method']} {scope['path']}"
                await _send_error(send, 400, reason)
                return
            await self._app(scope, receive, send)
            return
        if len(raw_keys) > 1:
            await _send_error(send, 400, "send exactly one Idempotency-Key header")
            return
        try:
            key = parse_key(bytes(raw_keys[0]))
        except InvalidIdempotencyKeyError as error:
            await _send_error(send, 400, str(error))
            return
        try:
            body = await self._read_body(scope, receive)
        except _ClientGone:
            return
        if body is None:
            reason = f"request body is larger than {self._max_request_bytes} bytes"
            await _send_error(send, 413, reason)
            return

        method, path = scope["method"], scope["path"]
        selected = [(n, bytes(v)) for n, v in scope["headers"] if n in self._fingerprint_headers]
        fingerprint = request_fingerprint(method, path, scope["query_string"], body, selected)
        storage_key = scope_key(self._principal(scope) or "anonymous", method, path, key)

        held = await self._claim(storage_key, fingerprint)
        if isinstance(held, Lease):
            await self._run(held, scope, body, receive, send)
        elif held is None:
            await _send_error(
                send,
                409,
                "a request with this Idempotency-Key is still in progress; retry later",
                ((b"retry-after", self._retry_after.encode()),),
            )
        elif held.fingerprint != fingerprint:
            await _send_error(
                send,
                422,
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new request",
            )
        else:
            assert held.response is not None  # _claim only returns completed records
            await _replay(send, held.response)

    def _binding_on_startup(self, send: Send) -> Send:
        async def forward(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and self._store is None:
                try:
                    await self.bind()
                except Exception as error:
                    _log.error("idempotency store did not open", error=repr(error))
                    reason = f"the idempotency store did not open: {error!r}"
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
            await send(message)

        return forward

    def _is_required(self, path: str) -> bool:
        # "/orders" covers "/orders" and "/orders/42", not "/orders-archive".
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self._required_paths)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self._max_request_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _claim(self, key: str, fingerprint: str) -> Lease | IdempotencyRecord | None:
        """A lease, a record to answer from (completed or mismatched), or None for 409."""
        if not self._wait:
            held = await self._store.acquire(key, fingerprint, lease=self._lease)
            return held if _answerable(held, fingerprint) else None
        deadline = self._clock.monotonic() + self._lease
        try:
            while True:
                # Take the wake-up event BEFORE looking at the store: a finish that lands
                # after the look then sets this very event, so the wake-up cannot be missed.
                event = self._wakeups.setdefault(key, asyncio.Event())
                held = await self._store.acquire(key, fingerprint, lease=self._lease)
                if _answerable(held, fingerprint):
                    return held
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return None
                await self._sleep_or_wake(event, min(self._poll_interval, remaining))
        finally:
            # Whoever leaves drops the shared event (waking the rest to look again), so an
            # entry never outlives its waiters even when the first request ran elsewhere.
            self._wake(key)

    async def _sleep_or_wake(self, event: asyncio.Event, seconds: float) -> None:
        woken = asyncio.ensure_future(event.wait())
        slept = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()

    def _wake(self, key: str) -> None:
        event = self._wakeups.pop(key, None)
        if event is not None:
            event.set()

    async def _run(
        self, lease: Lease, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        capture = _Capture(self, lease, send)
        body_sent = False

        async def receive_again() -> Message:
            nonlocal body_sent
            if body_sent:
                return await receive()
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self._app(scope, receive_again, capture.send)
        except BaseException:
            # Nothing was stored: free the key now so the client's retry runs again.
            if not capture.finished:
                await self._release(lease)
            raise
        if not capture.finished:
            await self._release(lease)

    async def _complete(self, lease: Lease, response: StoredResponse) -> bool:
        try:
            stored = await self._store.complete(lease, response, ttl=self._ttl)
        except Exception:
            # The app's work is done and its response is still sent; the key stays leased
            # until the lease expires, after which a retry runs the app again.
            _log.exception("idempotency_store_failed", operation="complete")
            return False
        finally:
            self._wake(lease.key)
        if not stored:
            _log.warning("idempotency_lease_lost", lease_seconds=self._lease)
        return stored

    async def _release(self, lease: Lease) -> None:
        try:
            await self._store.release(lease)
        except Exception:
            _log.exception("idempotency_store_failed", operation="release")
        finally:
            self._wake(lease.key)


class _Capture:
    """The ``send`` given to the app: holds a storable response back until it is stored."""

    __slots__ = (
        "_chunks",
        "_lease",
        "_middleware",
        "_passing",
        "_send",
        "_size",
        "_start",
        "finished",
    )

    def __init__(self, middleware: IdempotencyMiddleware, lease: Lease, send: Send) -> None:
        self._middleware = middleware
        self._lease = lease
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._passing = False
        self.finished = False
        """True once the lease was handed to ``complete`` (stored or not)."""

    async def send(self, message: Message) -> None:
        if self._passing:
            await self._send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._start = message
            storable = message["status"] < 500 or self._middleware._store_server_errors
            if not storable or message.get("trailers", False):
                await self._pass_through()
            return
        if kind != "http.response.body" or self._start is None:
            await self._pass_through()
            await self._send(message)
            return
        chunk = message.get("body", b"")
        self._chunks.append(chunk)
        self._size += len(chunk)
        more = message.get("more_body", False)
        if self._size > self._middleware._max_response_bytes:
            await self._pass_through(more_body=more)
            return
        if more:
            return
        start = self._start
        excluded = self._middleware._excluded
        body = b"".join(self._chunks)
        response = StoredResponse(
            start["status"],
            tuple((bytes(n), bytes(v)) for n, v in start.get("headers", ()) if n not in excluded),
            body,
        )
        self.finished = True
        stored = await self._middleware._complete(self._lease, response)
        await self._send(start if stored else _with_header(start, _NOT_STORED))
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _pass_through(self, *, more_body: bool | None = None) -> None:
        """Give up storing: send what was held back, then forward everything as it comes."""
        self._passing = True
        if self._start is not None:
            await self._send(_with_header(self._start, _NOT_STORED))
        if more_body is not None:
            body = b"".join(self._chunks)
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})
        self._chunks = []


def _answerable(held: Lease | IdempotencyRecord, fingerprint: str) -> bool:
    """Whether ``held`` settles the request now: run it, replay, or 422 a mismatch."""
    return isinstance(held, Lease) or held.state == "completed" or held.fingerprint != fingerprint


def _with_header(start: Message, header: tuple[bytes, bytes]) -> Message:
    return {**start, "headers": [*start.get("headers", ()), header]}


async def _replay(send: Send, response: StoredResponse) -> None:
    headers = [*response.headers, _REPLAYED]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


async def _send_error(
    send: Send, status: int, reason: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"error": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _method(method: str) -> str:
    if not isinstance(method, str) or not method.isalpha():
        raise ConfigError("methods", method, "must be HTTP method names such as 'POST'")
    return method.upper()


def _path_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigError("required_paths", prefix, "must be path prefixes starting with '/'")
    return prefix
