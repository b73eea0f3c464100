"""What identifies a key and what identifies a request.

The *scope key* names a stored record: the client's key is only meaningful for one principal
on one route, so two users (or two routes) reusing the same key never see each other's
responses. The *fingerprint* identifies the request itself; the same key arriving with a
different fingerprint is a client bug, answered with 422 instead of a wrong replay. Both
hash length-prefixed parts, so no choice of parts can collide with another by shifting
bytes between them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from shipyard.idempotency.errors import InvalidIdempotencyKeyError

MAX_KEY_LENGTH = 255
"""Longest accepted ``Idempotency-Key``, in characters (Stripe's limit)."""


def parse_key(raw: bytes) -> str:
    """The idempotency key in a raw header value.

    Accepts Stripe's bare form (``Idempotency-Key: 3f2a...``) and the IETF draft's
    structured-field string (``Idempotency-Key: "3f2a..."``). Raises
    :class:`InvalidIdempotencyKeyError` unless the key is 1-255 printable ASCII characters.
    """
    value = raw.strip(b" \t")
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        value = value[1:-1]
    if not value:
        raise InvalidIdempotencyKeyError("Idempotency-Key is empty; send 1-255 characters")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKeyError(
            f"Idempotency-Key is {len(value)} characters long; send at most {MAX_KEY_LENGTH}"
        )
    if any(byte < 0x20 or byte > 0x7E for byte in value):
        raise InvalidIdempotencyKeyError(
            "Idempotency-Key must be printable ASCII (e.g. a UUID); it contains other bytes"
        )
    return value.decode("ascii")


def _digest(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def scope_key(principal: str, method: str, path: str, key: str) -> str:
    """The store key for ``key`` sent by ``principal`` to ``method path`` (a SHA-256 hex)."""
    return _digest((principal.encode(), method.encode(), path.encode(), key.encode()))


def request_fingerprint(
    method: str,
    path: str,
    query: bytes,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> str:
    """SHA-256 hex of the method, path, query string, body and the given header pairs."""
    parts = [method.encode(), path.encode(), query, body]
    for name, value in headers:
        parts += (name, value)
    return _digest(parts)
