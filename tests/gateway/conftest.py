"""Fixtures for gateway tests: a recording upstream, a raw HTTP client, token minting."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from shipyard.core import ManualClock
from shipyard.gateway import Gateway, parse_config

WALL = 1_700_000_000.0


@dataclass
class Seen:
    """A request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class UpstreamReply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b'{"ok":true}'


Responder = Callable[[Seen], Any]


class Upstream:
    """A tiny HTTP/1.1 server that records what it receives and answers as told."""

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.seen: list[Seen] = []
        self.connections = 0
        self.respond: Responder = lambda seen: UpstreamReply(
            headers=[("x-served-by", self.name)], body=json.dumps({"path": seen.path}).encode()
        )
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done: list[Seen] = []

        class Parse:
            def __init__(self) -> None:
                self.url = b""
                self.headers: dict[str, str] = {}
                self.body = b""

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers[name.decode().lower()] = value.decode()

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                done.append(
                    Seen(parser.get_method().decode(), self.url.decode(), self.headers, self.body)
                )
                self.url, self.headers, self.body = b"", {}, b""

        state = Parse()
        parser = httptools.HttpRequestParser(state)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                while done:
                    seen = done.pop(0)
                    self.seen.append(seen)
                    reply = self.respond(seen)
                    if asyncio.iscoroutine(reply):
                        reply = await reply
                    if reply is None:
                        continue
                    if callable(reply):  # a custom writer (streaming tests)
                        await reply(writer)
                        continue
                    head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(
                        f"{k}: {v}\r\n" for k, v in reply.headers
                    )
                    writer.write(
                        head.encode()
                        + f"content-length: {len(reply.body)}\r\n\r\n".encode()
                        + reply.body
                    )
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream("a")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def upstream_b() -> AsyncIterator[Upstream]:
    server = Upstream("b")
    await server.start()
    yield server
    await server.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_responses(data: bytes, *, head: bool = False) -> list[Response]:
    """Every complete response in ``data``."""
    out: list[Response] = []

    class Collect:
        def __init__(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode().lower()] = value.decode()

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_headers_complete(self) -> None:
            if head:
                out.append(Response(parser.get_status_code(), self.headers, b""))
                self.headers = {}

        def on_message_complete(self) -> None:
            out.append(Response(parser.get_status_code(), self.headers, self.body))
            self.headers, self.body = {}, b""

    parser = httptools.HttpResponseParser(Collect())
    with contextlib.suppress(httptools.HttpParserError):  # a partial response is fine
        parser.feed_data(data)
    return out


async def send_raw(port: int, data: bytes, *, expect: int = 1, wait: float = 5.0) -> bytes:
    """Send raw bytes; read until ``expect`` responses arrived or the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(wait):
            while len(parse_responses(received)) < expect:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    finally:
        writer.close()
    return received


async def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "gateway.test",
) -> Response:
    """One request on a fresh connection."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    data = await send_raw(port, raw)
    responses = parse_responses(data, head=method == "HEAD")
    assert responses, f"no response in {data!r}"
    return responses[0]


@asynccontextmanager
async def running(yaml_text: str, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A started gateway for ``yaml_text`` (access log to memory unless given)."""
    kwargs.setdefault("access_log", io.BytesIO())
    kwargs.setdefault("clock", ManualClock(wall_start=WALL))
    gateway = Gateway(parse_config(yaml_text, source="test.yaml"), **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(
    claims: dict[str, Any],
    *,
    secret: bytes | None = None,
    sign: Callable[[bytes], bytes] | None = None,
    header: dict[str, Any] | None = None,
) -> str:
    """A compact JWS; HS256 with ``secret`` unless ``sign`` produces the signature."""
    head = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    if sign is not None:
        signature = sign(signing_input.encode())
    elif secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    else:
        signature = b""
    return f"{signing_input}.{b64(signature)}"


def free_port_closed() -> int:
    """A port on which nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
