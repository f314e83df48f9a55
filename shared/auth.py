"""JWT bearer authentication and the access scoping rules of DESIGN.md.

Tokens carry `sub`, `role` and, for providers and employers, `provider_id` / `employer_id`.
HS256 with AUTH_SECRET in development; an RS/ES/EdDSA public key or a JWKS URL in production.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import jwt
from starlette.concurrency import run_in_threadpool

from shared.errors import Unauthorized
from shared.lru import LruMap

ASYMMETRIC_ALGORITHMS = ["RS256", "ES256", "EdDSA"]
CLOCK_LEEWAY_S = 30
# Verified tokens remembered (until they expire): a client sends the same token with every request.
VERIFIED_TOKENS_REMEMBERED = 4096
# A key set fetched from AUTH_JWKS_URL is used this long; a key removed from it stops being
# accepted within this time, by tokens remembered as verified too.
JWKS_LIFESPAN_S = 300.0


class Role(StrEnum):
    PARTICIPANT = "participant"
    PROVIDER = "provider"
    EMPLOYER = "employer"
    STAFF = "staff"
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified claims of a bearer token."""

    sub: str
    role: Role
    provider_id: str | None = None
    employer_id: str | None = None

    @property
    def is_staff(self) -> bool:
        return self.role is Role.STAFF

    @property
    def is_trusted(self) -> bool:
        """Staff and other services act on anything."""
        return self.role in (Role.STAFF, Role.SERVICE)


class TokenVerifier:
    """Verifies bearer tokens against the configured key material.

    A token that verified once is remembered until it expires: checking its signature again
    would give the same answer (a JWT is not revoked before its `exp`), and the check costs more
    CPU than the rest of a small request. With a JWKS URL the answer may change (a key removed
    from the set), so a token is checked again once the key set it was checked with is due for
    a refresh. Tokens that fail are not remembered.
    """

    def __init__(
        self,
        *,
        secret: str = "",
        public_key: str = "",
        jwks_url: str = "",
        jwks_lifespan_s: float = JWKS_LIFESPAN_S,
        remember: int = VERIFIED_TOKENS_REMEMBERED,
    ):
        if not (secret or public_key or jwks_url):
            msg = "AUTH_SECRET, AUTH_PUBLIC_KEY or AUTH_JWKS_URL must be set"
            raise ValueError(msg)
        self._secret = secret
        self._public_key = public_key
        self._jwks_url = jwks_url
        self._jwks_lifespan_s = jwks_lifespan_s
        # Per token: its principal, the time (epoch seconds) from which it counts as expired, and
        # the time until which it is trusted without a check. A lookup never verifies (so never
        # blocks on a key fetch).
        self._verified: LruMap[str, tuple[Principal, float, float]] = LruMap(remember)

    async def verify_on_loop(self, token: str) -> Principal:
        """`verify` for the event loop: a check that may fetch keys over the network (JWKS) runs in
        the thread pool, unless the token is remembered."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        if self._jwks_url:
            return await run_in_threadpool(self._check, token)
        return self._check(token)

    def verify(self, token: str) -> Principal:
        return self._remembered(token) or self._check(token)

    @cached_property
    def _jwks_client(self) -> jwt.PyJWKClient:
        # Not `cache_keys`: PyJWT would keep each key it found for good, even once removed from the set.
        return jwt.PyJWKClient(self._jwks_url, lifespan=self._jwks_lifespan_s, timeout=5)

    def _remembered(self, token: str) -> Principal | None:
        """The principal of a token verified before and trusted still; raises if it has expired since."""
        remembered = self._verified.get(token)
        if remembered is None:
            return None
        principal, expires_at, trusted_until = remembered
        now = time.time()
        if now >= expires_at:
            raise _expired()
        return principal if now < trusted_until else None

    def _check(self, token: str) -> Principal:
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise _expired() from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError):
            raise Unauthorized("The token is not valid.", code="token_invalid") from None
        principal = principal_from_claims(claims)
        # PyJWT's rule: expired once `exp <= now - leeway`; `exp` is a number once decoded.
        expires_at = float(claims["exp"]) + CLOCK_LEEWAY_S
        trusted_until = min(expires_at, time.time() + self._jwks_lifespan_s) if self._jwks_url else expires_at
        self._verified.put(token, (principal, expires_at, trusted_until))
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        options = {"require": ["sub", "role", "exp"]}
        if self._jwks_url:
            key = self._jwks_client.get_signing_key_from_jwt(token).key
            return jwt.decode(token, key, algorithms=ASYMMETRIC_ALGORITHMS, options=options, leeway=CLOCK_LEEWAY_S)
        if self._public_key:
            return jwt.decode(
                token, self._public_key, algorithms=ASYMMETRIC_ALGORITHMS, options=options, leeway=CLOCK_LEEWAY_S
            )
        return jwt.decode(token, self._secret, algorithms=["HS256"], options=options, leeway=CLOCK_LEEWAY_S)


def _expired() -> Unauthorized:
    return Unauthorized("The token has expired.", code="token_expired")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    try:
        role = Role(claims["role"])
    except ValueError:
        raise Unauthorized("The token has an unknown role.", code="token_invalid") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise Unauthorized("The token has no usable subject.", code="token_invalid")
    provider_id = claims.get("provider_id")
    employer_id = claims.get("employer_id")
    if role is Role.PROVIDER and not provider_id:
        raise Unauthorized("A provider token needs a provider_id claim.", code="token_invalid")
    if role is Role.EMPLOYER and not employer_id:
        raise Unauthorized("An employer token needs an employer_id claim.", code="token_invalid")
    return Principal(
        sub=sub,
        role=role,
        provider_id=str(provider_id) if provider_id else None,
        employer_id=str(employer_id) if employer_id else None,
    )


def mint_token(
    *,
    secret: str,
    role: str,
    sub: str,
    provider_id: str | None = None,
    employer_id: str | None = None,
    ttl_s: int = 12 * 3600,
) -> str:
    """A development token (HS256). Production tokens come from the identity provider."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": Role(role).value, "iat": now, "exp": now + ttl_s}
    if provider_id:
        claims["provider_id"] = provider_id
    if employer_id:
        claims["employer_id"] = employer_id
    return jwt.encode(claims, secret, algorithm="HS256")


def service_token(secret: str, service_name: str) -> str:
    return mint_token(secret=secret, role=Role.SERVICE, sub=f"service:{service_name}", ttl_s=3600)


def mint_token_cli() -> None:
    parser = argparse.ArgumentParser(description="Print a development JWT (HS256 with AUTH_SECRET).")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--sub", required=True)
    parser.add_argument("--provider-id")
    parser.add_argument("--employer-id")
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="seconds")
    args = parser.parse_args()
    secret = os.environ.get("AUTH_SECRET", "")
    if not secret:
        raise SystemExit("AUTH_SECRET is not set")
    print(
        mint_token(
            secret=secret,
            role=args.role,
            sub=args.sub,
            provider_id=args.provider_id,
            employer_id=args.employer_id,
            ttl_s=args.ttl,
        )
    )
