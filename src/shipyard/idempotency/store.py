"""The ``IdempotencyStore`` port and the records it keeps.

A key moves through two states. ``acquire`` creates an *in-progress* record holding a
lease (a random token and an expiry); exactly one concurrent caller gets the lease. The
holder then either ``complete``s it with the response, which is kept for a TTL, or
``release``s it so the key is free again. A holder that dies does neither: its lease
simply expires and the next ``acquire`` takes the key over. ``complete`` and ``release``
only act while the caller's token still holds the key, so a holder whose lease expired
and was taken over cannot overwrite the new holder's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

RecordState = Literal["in_progress", "completed"]
Headers = tuple[tuple[bytes, bytes], ...]
"""ASGI-style raw headers: ``(lower-case name, value)`` byte pairs, in order."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as the client first received it, replayed byte for byte."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that this caller won ``acquire`` for ``key``; pass it to complete or release."""

    key: str
    fingerprint: str
    token: str
    expires_at: float
    """Wall-clock second (``Clock.now``) after which another caller may take the key."""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store holds for a key that someone else acquired first."""

    key: str
    fingerprint: str
    state: RecordState
    expires_at: float
    """End of the lease (in progress) or of the TTL (completed), in ``Clock.now`` seconds."""
    response: StoredResponse | None = None
    """The stored response once ``state == "completed"``."""


class IdempotencyStore(Protocol):
    """Where idempotency keys, their leases and their responses live."""

    async def acquire(
        self, key: str, fingerprint: str, *, lease: float
    ) -> Lease | IdempotencyRecord:
        """Atomically claim ``key`` for ``lease`` seconds.

        Returns a :class:`Lease` when the key was free (never seen, expired, or released);
        otherwise the :class:`IdempotencyRecord` that holds it, so the caller can compare
        fingerprints, wait, or replay.
        """
        ...

    async def complete(self, lease: Lease, response: StoredResponse, *, ttl: float) -> bool:
        """Store ``response`` for ``ttl`` seconds and end the lease.

        Returns ``False`` (and stores nothing) when the lease no longer holds the key.
        """
        ...

    async def release(self, lease: Lease) -> None:
        """Forget the in-progress record so the key may be used again (no-op if lost)."""
        ...

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``, or ``None`` when there is none or it expired."""
        ...

    async def purge_expired(self) -> int:
        """Delete expired records; returns how many were deleted."""
        ...


_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(tuple[tuple[bytes, bytes], ...])


def encode_headers(headers: Headers) -> bytes:
    """Headers as compact bytes for a database column or a Redis value."""
    return _headers_encoder.encode(headers)


def decode_headers(data: bytes) -> Headers:
    """The inverse of :func:`encode_headers`."""
    return _headers_decoder.decode(data)
