"""Demo JWTs for the shop's gateway (HS256 with the shop's demo secret).

A real deployment gets its tokens from an identity provider and gives the gateway its
JWKS URL; the demo mints its own so that ``shipyard up`` can print a working token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

KEY_ID = "shop-demo"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(secret: str, subject: str, *, ttl: float = 24 * 3600.0) -> str:
    """An HS256 JWT for ``subject`` (the user id the gateway forwards as ``X-User-Id``)."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}
    claims = {"sub": subject, "iat": now, "exp": now + int(ttl)}
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
