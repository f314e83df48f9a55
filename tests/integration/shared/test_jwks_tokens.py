"""Bearer tokens checked against a key set served over HTTP (AUTH_JWKS_URL), as an identity provider
publishes one: keys found by `kid`, and a key removed from the set no longer accepted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.auth import Principal, Role, TokenVerifier
from shared.errors import Unauthorized

LIFESPAN_S = 0.5


class KeySet:
    """Signing keys by kid; the served set holds the public halves of the published ones."""

    def __init__(self, *kids: str) -> None:
        self.private = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in kids}
        self.published = set(kids)
        self.fetches = 0

    def document(self) -> dict[str, Any]:
        keys = []
        for kid in sorted(self.published):
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private[kid].public_key(), as_dict=True)
            keys.append({**public, "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}

    def token(self, kid: str, sub: str = "staff-1", ttl_s: int = 3600) -> str:
        claims = {"sub": sub, "role": "staff", "exp": int(time.time()) + ttl_s}
        return jwt.encode(claims, self.private[kid], algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def key_set() -> KeySet:
    return KeySet("key-a", "key-b")


@pytest.fixture
def jwks_url(key_set: KeySet) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key_set.fetches += 1
            body = json.dumps(key_set.document()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        thread.join()


def refusal_code(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as refused:
        verifier.verify(token)
    return refused.value.code


def test_tokens_signed_with_published_keys_are_accepted(key_set: KeySet, jwks_url: str) -> None:
    verifier = TokenVerifier(jwks_url=jwks_url)
    assert verifier.verify(key_set.token("key-a", sub="s-a")) == Principal(sub="s-a", role=Role.STAFF)
    assert verifier.verify(key_set.token("key-b", sub="s-b")).sub == "s-b"
    assert key_set.fetches == 1  # the set is kept for its lifespan

    stranger = KeySet("key-a")  # same kid, another key
    assert refusal_code(verifier, stranger.token("key-a")) == "token_invalid"


def test_a_key_removed_from_the_set_is_no_longer_accepted(key_set: KeySet, jwks_url: str) -> None:
    verifier = TokenVerifier(jwks_url=jwks_url, jwks_lifespan_s=LIFESPAN_S)
    remembered, fresh = key_set.token("key-a", sub="remembered"), key_set.token("key-a", sub="fresh")
    assert verifier.verify(remembered).sub == "remembered"

    key_set.published.discard("key-a")  # rotated out, or compromised
    assert verifier.verify(remembered).sub == "remembered"  # within the lifespan of the set it was checked with
    time.sleep(LIFESPAN_S + 0.1)
    assert refusal_code(verifier, remembered) == "token_invalid"
    assert refusal_code(verifier, fresh) == "token_invalid"
    assert verifier.verify(key_set.token("key-b")).sub == "staff-1"


@pytest.mark.anyio
async def test_on_the_event_loop_too(key_set: KeySet, jwks_url: str) -> None:
    verifier = TokenVerifier(jwks_url=jwks_url, jwks_lifespan_s=LIFESPAN_S)
    token = key_set.token("key-a")
    assert (await verifier.verify_on_loop(token)).sub == "staff-1"
    key_set.published.discard("key-a")
    time.sleep(LIFESPAN_S + 0.1)
    with pytest.raises(Unauthorized):
        await verifier.verify_on_loop(token)
