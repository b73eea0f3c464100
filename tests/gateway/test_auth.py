"""JWT and API-key authentication, including the classic JWT attacks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shipyard.core import ManualClock
from shipyard.gateway import InvalidToken, JwtConfig, JwtKey, JwtVerifier

from .conftest import WALL, Upstream, UpstreamReply, b64, make_token, request, running

SECRET = b"s3cret-s3cret-s3cret"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PEM = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
GOOD = {"sub": "alice", "iss": "https://id.example", "aud": "shop", "exp": WALL + 300}


def rs256(key: rsa.RSAPrivateKey) -> Any:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def es256(data: bytes) -> bytes:
    r, s = decode_dss_signature(EC_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def jwt_yaml(upstream: Upstream, keys: str) -> str:
    return f"""
listen: 127.0.0.1:0
frontends:
  web:
    jwt:
      issuer: https://id.example
      audience: shop
      leeway: 30
      claim_headers: {{sub: X-User-Id, roles: X-Roles}}
      keys:
{keys}
    routes:
      - {{name: private, prefix: /me, upstream: {upstream.url}, auth: jwt}}
      - {{name: public, prefix: /pub, upstream: {upstream.url}, auth: none}}
"""


def hs_yaml(upstream: Upstream) -> str:
    return jwt_yaml(upstream, f"        - {{kid: h1, alg: HS256, secret: {SECRET.decode()}}}")


def rs_yaml(upstream: Upstream) -> str:
    return jwt_yaml(
        upstream,
        "        - kid: r1\n          alg: RS256\n          public_key: |\n" + indent(RSA_PEM, 12),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_passes_and_its_claims_become_headers(upstream: Upstream) -> None:
    token = make_token(
        {**GOOD, "roles": ["admin"]}, secret=SECRET, header={"alg": "HS256", "kid": "h1"}
    )
    async with running(hs_yaml(upstream)) as gw:
        response = await request(
            gw.address("web")[1], path="/me", headers={**bearer(token), "X-User-Id": "mallory"}
        )
    assert response.status == 200
    seen = upstream.seen[0].headers
    assert seen["x-user-id"] == "alice"
    assert json.loads(seen["x-roles"]) == ["admin"]


async def test_client_supplied_claim_headers_are_stripped_even_on_public_routes(
    upstream: Upstream,
) -> None:
    async with running(hs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/pub", headers={"X-User-Id": "root"})
    assert response.status == 200
    assert "x-user-id" not in upstream.seen[0].headers


async def test_a_request_without_a_token_gets_401_with_a_challenge(upstream: Upstream) -> None:
    async with running(hs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/me")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert upstream.seen == []


def tampered(token: str) -> str:
    head, _, signature = token.split(".")
    forged = b64(json.dumps({**GOOD, "sub": "admin"}).encode())
    return f"{head}.{forged}.{signature}"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_token(GOOD, header={"alg": "none", "kid": "h1"}), "not allowed"),
        (make_token(GOOD, header={"alg": "None", "kid": "h1"}), "not allowed"),
        (make_token(GOOD, secret=b"wrong", header={"alg": "HS256", "kid": "h1"}), "signature"),
        (
            tampered(make_token(GOOD, secret=SECRET, header={"alg": "HS256", "kid": "h1"})),
            "signature",
        ),
        (make_token({**GOOD, "exp": WALL - 31}, secret=SECRET, header={"alg": "HS256"}), "expired"),
        (
            make_token({**GOOD, "nbf": WALL + 31}, secret=SECRET, header={"alg": "HS256"}),
            "not valid yet",
        ),
        (make_token({**GOOD, "aud": "other"}, secret=SECRET, header={"alg": "HS256"}), "audience"),
        (
            make_token({**GOOD, "iss": "https://evil"}, secret=SECRET, header={"alg": "HS256"}),
            "issuer",
        ),
        (make_token({"sub": "a"}, secret=SECRET, header={"alg": "HS256"}), "exp"),
        (make_token(GOOD, secret=SECRET, header={"alg": "HS256", "kid": "zz"}), "unknown key"),
        ("not-a-jwt", "compact JWS"),
    ],
)
async def test_bad_tokens_are_rejected_with_the_reason(
    upstream: Upstream, token: str, reason: str
) -> None:
    async with running(hs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/me", headers=bearer(token))
    assert response.status == 401
    assert reason in response.json()["error"]
    assert upstream.seen == []


async def test_leeway_accepts_a_token_expired_by_less_than_the_skew(upstream: Upstream) -> None:
    token = make_token({**GOOD, "exp": WALL - 29}, secret=SECRET, header={"alg": "HS256"})
    async with running(hs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/me", headers=bearer(token))
    assert response.status == 200


async def test_rs256_tokens_verify_with_the_public_key(upstream: Upstream) -> None:
    token = make_token(GOOD, sign=rs256(RSA_KEY), header={"alg": "RS256", "kid": "r1"})
    async with running(rs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/me", headers=bearer(token))
    assert response.status == 200


async def test_hs256_signed_with_the_rsa_public_key_is_rejected(upstream: Upstream) -> None:
    # The classic algorithm-confusion attack: the public key used as an HMAC secret.
    token = make_token(GOOD, secret=RSA_PEM.encode(), header={"alg": "HS256", "kid": "r1"})
    async with running(rs_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/me", headers=bearer(token))
    assert response.status == 401
    assert "not allowed" in response.json()["error"]


async def test_es256_tokens_verify_with_a_p256_key(upstream: Upstream) -> None:
    yaml = jwt_yaml(
        upstream, "        - alg: ES256\n          public_key: |\n" + indent(EC_PEM, 12)
    )
    token = make_token(GOOD, sign=es256, header={"alg": "ES256"})
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        good = await request(port, path="/me", headers=bearer(token))
        bad = await request(port, path="/me", headers=bearer(tampered(token)))
    assert (good.status, bad.status) == (200, 401)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }


async def test_an_unknown_kid_refreshes_the_jwks_from_its_url(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    published = [jwk(RSA_KEY, "k1")]
    jwks = upstream_b
    jwks.respond = lambda seen: UpstreamReply(body=json.dumps({"keys": published}).encode())
    yaml = f"""
listen: 127.0.0.1:0
frontends:
  web:
    jwt: {{jwks_url: "{jwks.url}/.well-known/jwks.json", jwks_min_refresh: 0}}
    routes: [{{prefix: /, upstream: {upstream.url}, auth: jwt}}]
"""
    old = make_token(GOOD, sign=rs256(RSA_KEY), header={"alg": "RS256", "kid": "k1"})
    new = make_token(GOOD, sign=rs256(rotated), header={"alg": "RS256", "kid": "k2"})
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        assert (await request(port, path="/", headers=bearer(old))).status == 200
        assert (await request(port, path="/", headers=bearer(new))).status == 401
        published.append(jwk(rotated, "k2"))
        assert (await request(port, path="/", headers=bearer(new))).status == 200
    assert len(jwks.seen) == 3  # start-up, then one refresh per unknown kid


async def test_a_cached_token_is_still_rejected_once_it_expires() -> None:
    clock = ManualClock(wall_start=WALL)
    verifier = JwtVerifier(
        JwtConfig(keys=(JwtKey(alg="HS256", secret=SECRET),), leeway=0), clock=clock
    )
    token = make_token({**GOOD, "exp": WALL + 10}, secret=SECRET).encode()
    assert (await verifier.verify(token)).consumer == "alice"
    clock.advance(11)
    assert verifier.cached(token) is None
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


class SteppedWallClock(ManualClock):
    """A wall clock that can be stepped backwards (as NTP may do to a real one)."""

    wall = WALL

    def now(self) -> float:
        return self.wall


async def test_a_cached_token_is_rejected_before_its_nbf_if_the_clock_steps_back() -> None:
    clock = SteppedWallClock()
    verifier = JwtVerifier(
        JwtConfig(keys=(JwtKey(alg="HS256", secret=SECRET),), leeway=5), clock=clock
    )
    token = make_token({**GOOD, "nbf": WALL - 1}, secret=SECRET).encode()
    assert (await verifier.verify(token)).consumer == "alice"
    assert verifier.cached(token) is not None
    clock.wall = WALL - 10  # before nbf minus the leeway
    assert verifier.cached(token) is None
    with pytest.raises(InvalidToken, match="nbf"):
        await verifier.verify(token)


async def test_the_token_cache_is_keyed_on_the_exact_token_and_bounded() -> None:
    clock = ManualClock(wall_start=WALL)
    verifier = JwtVerifier(
        JwtConfig(keys=(JwtKey(alg="HS256", secret=SECRET),), cache_size=3), clock=clock
    )
    token = make_token(GOOD, secret=SECRET).encode()
    await verifier.verify(token)
    # The cached token with its signature changed is a different token: checked afresh.
    signing_input, _, signature = token.rpartition(b".")
    forged = signing_input + b"." + (b"A" if signature[:1] != b"A" else b"B") + signature[1:]
    assert verifier.cached(forged) is None
    with pytest.raises(InvalidToken, match="signature"):
        await verifier.verify(forged)
    for n in range(10):
        await verifier.verify(make_token({**GOOD, "sub": f"user{n}"}, secret=SECRET).encode())
        assert verifier.tokens_cached <= 3


API_KEYS = f"""
    api_keys:
      header: X-Api-Key
      query: api_key
      keys:
        - {{consumer: acme, key: acme-key-1}}
        - {{consumer: globex, sha256: {hashlib.sha256(b"globex-key").hexdigest()}}}
"""


def api_yaml(upstream: Upstream) -> str:
    return f"""
listen: 127.0.0.1:0
frontends:
  partner:
{API_KEYS}
    routes: [{{prefix: /, upstream: {upstream.url}}}]
"""


async def test_api_keys_in_header_or_query_identify_the_consumer(upstream: Upstream) -> None:
    async with running(api_yaml(upstream)) as gw:
        port = gw.address("partner")[1]
        by_header = await request(port, path="/a", headers={"X-Api-Key": "acme-key-1"})
        by_query = await request(port, path="/b?api_key=globex-key&x=1")
    assert (by_header.status, by_query.status) == (200, 200)
    # The key never travels upstream.
    assert "x-api-key" not in upstream.seen[0].headers
    assert upstream.seen[1].path == "/b?x=1"


async def test_a_missing_or_wrong_api_key_gets_401(upstream: Upstream) -> None:
    async with running(api_yaml(upstream)) as gw:
        port = gw.address("partner")[1]
        missing = await request(port, path="/a")
        wrong = await request(port, path="/a", headers={"X-Api-Key": "acme-key-2"})
    assert (missing.status, wrong.status) == (401, 401)
    assert upstream.seen == []
