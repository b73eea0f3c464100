"""JWT authentication: HS256, RS256 and ES256 with inline keys or a JWKS URL.

The accepted algorithm comes from the KEY, never from the token header: a token whose
header names another algorithm (``none``, or HS256 signed with an RSA public key as the
secret) is rejected before any signature maths. ``exp`` is required; ``exp``/``nbf`` are
checked with a bounded leeway, and ``iss``/``aud`` when configured. Verified tokens are
cached (token bytes → claims, until they expire) so RSA/ECDSA verification is not paid
on every request by the same client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError, ShipyardError
from shipyard.core.logging import get_logger
from shipyard.gateway.config import JwtConfig, JwtKey
from shipyard.gateway.filters import (
    UNDECIDED,
    Decision,
    Exchange,
    Filter,
    Header,
    Reply,
    local_reply,
)

_log = get_logger("shipyard.gateway.jwt")
_decode_json = msgspec.json.decode
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()
_ECDSA = ec.ECDSA(hashes.SHA256())

Verify = Callable[[bytes, bytes], bool]
FetchJwks = Callable[[str], Awaitable[bytes]]


class InvalidToken(ShipyardError, ValueError):
    """The bearer token was rejected; the message says why (the client gets 401)."""


def b64url_decode(part: bytes) -> bytes:
    """Decode unpadded base64url (RFC 7515)."""
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("token is not valid base64url") from exc


def _hs256(secret: bytes) -> Verify:
    def verify(message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.new(secret, message, hashlib.sha256).digest(), signature)

    return verify


def _rs256(key: rsa.RSAPublicKey) -> Verify:
    def verify(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message, _PKCS1, _SHA256)
        except InvalidSignature:
            return False
        return True

    return verify


def _es256(key: ec.EllipticCurvePublicKey) -> Verify:
    def verify(message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        try:
            key.verify(encode_dss_signature(r, s), message, _ECDSA)
        except InvalidSignature:
            return False
        return True

    return verify


def _verifier_for(key: JwtKey, field: str) -> Verify:
    if key.alg == "HS256":
        assert key.secret is not None
        return _hs256(key.secret)
    assert key.public_key_pem is not None
    try:
        public = serialization.load_pem_public_key(key.public_key_pem)
    except ValueError as exc:
        raise ConfigError(field, "<pem>", f"must be a PEM public key ({exc})") from exc
    if key.alg == "RS256":
        if not isinstance(public, rsa.RSAPublicKey):
            raise ConfigError(field, key.alg, "RS256 needs an RSA public key")
        return _rs256(public)
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ConfigError(field, key.alg, "ES256 needs a P-256 (secp256r1) EC public key")
    return _es256(public)


def _int_from_b64(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return int.from_bytes(b64url_decode(value.encode()), "big")


def keys_from_jwks(document: bytes) -> dict[str | None, tuple[str, Verify]]:
    """Public keys of a JWKS document by ``kid``. Symmetric (``oct``) keys are ignored:
    a JWKS is public, so an HMAC secret in it would let anyone sign tokens."""
    keys: dict[str | None, tuple[str, Verify]] = {}
    data = _decode_json(document)
    for jwk in data.get("keys", []) if isinstance(data, dict) else []:
        if not isinstance(jwk, dict):
            continue
        try:
            kty = jwk.get("kty")
            if kty == "RSA":
                alg = jwk.get("alg", "RS256")
                if alg != "RS256":
                    continue
                rsa_key = rsa.RSAPublicNumbers(
                    _int_from_b64(jwk["e"]), _int_from_b64(jwk["n"])
                ).public_key()
                keys[jwk.get("kid")] = (alg, _rs256(rsa_key))
            elif kty == "EC" and jwk.get("crv") == "P-256":
                alg = jwk.get("alg", "ES256")
                if alg != "ES256":
                    continue
                ec_key = ec.EllipticCurvePublicNumbers(
                    _int_from_b64(jwk["x"]), _int_from_b64(jwk["y"]), ec.SECP256R1()
                ).public_key()
                keys[jwk.get("kid")] = (alg, _es256(ec_key))
        except (KeyError, ValueError, InvalidToken):
            _log.warning("skipping an unusable JWKS key", kid=jwk.get("kid"))
    return keys


async def fetch_url(url: str) -> bytes:
    """GET ``url`` and return the body (used for JWKS; not on the request hot path)."""
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        return await response.read()


class Verified:
    """What a verified token yields: its claims, consumer and the headers to forward."""

    __slots__ = ("claims", "consumer", "expires", "headers", "not_before")

    def __init__(
        self,
        claims: dict[str, Any],
        consumer: str | None,
        headers: list[Header],
        expires: float,
        not_before: float = float("-inf"),
    ) -> None:
        self.claims = claims
        self.consumer = consumer
        self.headers = headers
        self.expires = expires
        """Wall time after which the token is refused (``exp`` plus the leeway)."""
        self.not_before = not_before
        """Wall time before which the token is refused (``nbf`` minus the leeway)."""


class JwtVerifier:
    """Verifies compact JWS tokens against configured keys; caches successes."""

    def __init__(
        self, config: JwtConfig, *, clock: Clock = SYSTEM_CLOCK, fetch: FetchJwks = fetch_url
    ) -> None:
        self.config = config
        self._clock = clock
        self._fetch = fetch
        self._keys: dict[str | None, tuple[str, Verify]] = {}
        for index, key in enumerate(config.keys):
            self._keys[key.kid] = (key.alg, _verifier_for(key, f"jwt.keys[{index}].public_key"))
        self._inline = dict(self._keys)
        self._cache: dict[bytes, Verified] = {}
        self._now = time.time if clock is SYSTEM_CLOCK else clock.now
        self._last_fetch: float | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._claim_headers = [
            (claim, header.lower().encode()) for claim, header in config.claim_headers
        ]

    async def refresh_jwks(self) -> None:
        """Fetch the JWKS now (deduplicated: concurrent callers share one fetch)."""
        if self.config.jwks_url is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        assert self.config.jwks_url is not None
        self._last_fetch = self._clock.monotonic()
        try:
            document = await self._fetch(self.config.jwks_url)
            fetched = keys_from_jwks(document)
        except Exception as exc:
            _log.warning("JWKS refresh failed", url=self.config.jwks_url, error=str(exc))
            return
        self._keys = {**fetched, **self._inline}

    async def _key(self, kid: str | None) -> tuple[str, Verify]:
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            found = next(iter(self._keys.values()))
        if found is not None:
            return found
        if self.config.jwks_url is not None:
            last = self._last_fetch
            if last is None or self._clock.monotonic() - last >= self.config.jwks_min_refresh:
                await self.refresh_jwks()
                found = self._keys.get(kid)
                if found is not None:
                    return found
        raise InvalidToken("token signed with an unknown key")

    @property
    def tokens_cached(self) -> int:
        """How many verified tokens are cached now (at most ``config.cache_size``)."""
        return len(self._cache)

    def cached(self, token: bytes) -> Verified | None:
        """The earlier verification of ``token`` if it is still valid (no await needed).

        The signature is not checked again, but the time window is, on every call: a
        cached token stops passing the moment it expires (and a clock stepped back before
        its ``nbf`` does not let it through)."""
        cached = self._cache.get(token)
        if cached is None:
            return None
        if not cached.not_before <= self._now() <= cached.expires:
            del self._cache[token]
            return None
        return cached

    async def verify(self, token: bytes) -> Verified:
        """The verified claims of ``token``, or raises InvalidToken saying why."""
        cached = self.cached(token)
        if cached is not None:
            return cached
        now = self._clock.now()
        parts = token.split(b".")
        if len(parts) != 3:
            raise InvalidToken("token is not a compact JWS (header.payload.signature)")
        try:
            header = _decode_json(b64url_decode(parts[0]))
        except msgspec.DecodeError as exc:
            raise InvalidToken("token header is not JSON") from exc
        if not isinstance(header, dict):
            raise InvalidToken("token header is not a JSON object")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("token kid must be a string")
        alg, check = await self._key(kid)
        if header.get("alg") != alg:
            # Never let the token choose: this is what stops alg=none and HS/RS confusion.
            raise InvalidToken(f"token algorithm {header.get('alg')!r} is not allowed for this key")
        signature = b64url_decode(parts[2])
        if not check(parts[0] + b"." + parts[1], signature):
            raise InvalidToken("token signature does not verify")
        try:
            claims = _decode_json(b64url_decode(parts[1]))
        except msgspec.DecodeError as exc:
            raise InvalidToken("token payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise InvalidToken("token payload is not a JSON object")
        return self._check_claims(token, claims, now)

    def _check_claims(self, token: bytes, claims: dict[str, Any], now: float) -> Verified:
        config = self.config
        leeway = config.leeway
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise InvalidToken("token has no numeric exp claim")
        if now > exp + leeway:
            raise InvalidToken("token has expired")
        nbf = claims.get("nbf")
        not_before = float("-inf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise InvalidToken("token nbf claim is not numeric")
            if now + leeway < nbf:
                raise InvalidToken("token is not valid yet (nbf)")
            not_before = float(nbf) - leeway
        if config.issuer is not None and claims.get("iss") != config.issuer:
            raise InvalidToken("token issuer is not accepted")
        if config.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if config.audience not in audiences:
                raise InvalidToken("token audience does not include this gateway")
        headers: list[Header] = []
        for claim, header in self._claim_headers:
            value = claims.get(claim)
            if value is None:
                continue
            text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            # A claim must not be able to inject headers into the upstream request.
            encoded = text.encode("utf-8", "replace").translate(None, b"\r\n\x00")
            headers.append((header, encoded))
        consumer_value = claims.get(config.consumer_claim)
        consumer = None if consumer_value is None else str(consumer_value)
        verified = Verified(claims, consumer, headers, float(exp) + leeway, not_before)
        if config.cache_size:
            if len(self._cache) >= config.cache_size:
                self._cache.clear()  # bounded; refilling costs one verification per client
            self._cache[token] = verified
        return verified


_CHALLENGE = (b"www-authenticate", b'Bearer error="invalid_token"')


class JwtAuth(Filter):
    """Requires ``Authorization: Bearer <jwt>``; forwards configured claims as headers."""

    # A JWKS refresh runs in a Task of its own; the request only awaits its future.
    runs_inline = True

    def __init__(self, verifier: JwtVerifier) -> None:
        self.verifier = verifier
        self.strips = frozenset(header for _, header in verifier._claim_headers)
        self._cached = verifier.cached

    def bearer(self, ex: Exchange) -> bytes | None:
        """The bearer token of the request, if it has one."""
        value = ex.header_map.get(b"authorization")
        if value is None:
            return None
        scheme = value[:7]
        if scheme != b"Bearer " and scheme.lower() != b"bearer ":
            return None
        return value[7:].strip()

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """401 unless the bearer token verifies."""
        token = self.bearer(exchange)
        if token is None:
            return local_reply(401, "a bearer token is required", [_CHALLENGE])
        verified = self._cached(token)
        if verified is None:
            try:
                verified = await self.verifier.verify(token)
            except InvalidToken as exc:
                return local_reply(401, str(exc), [_CHALLENGE])
        exchange.consumer = verified.consumer
        if verified.headers:
            exchange.upstream_headers.extend(verified.headers)
        return None

    def decide(self, exchange: Exchange) -> Decision:
        """``on_request`` for a missing token or one in the verified cache; a token not
        cached yet is verified by ``on_request`` (a JWKS refresh may be awaited)."""
        value = exchange.header_map.get(b"authorization")
        # bearer(), inlined: this is every request.
        if value is None or (value[:7] != b"Bearer " and value[:7].lower() != b"bearer "):
            return local_reply(401, "a bearer token is required", [_CHALLENGE])
        # verifier.cached(), inlined; an entry out of its time window is left for
        # on_request, whose cached() drops it before verifying (and refusing) the token.
        verifier = self.verifier
        verified = verifier._cache.get(value[7:].strip())
        if verified is None or not verified.not_before <= verifier._now() <= verified.expires:
            return UNDECIDED
        exchange.consumer = verified.consumer
        if verified.headers:
            exchange.upstream_headers.extend(verified.headers)
        return None
