"""Bearer tokens: a token that verified is remembered until it expires, and only then."""

from __future__ import annotations

from types import SimpleNamespace

import jwt
import pytest

from shared import auth
from shared.auth import CLOCK_LEEWAY_S, Principal, Role, TokenVerifier, mint_token
from shared.errors import Unauthorized

SECRET = "unit-test-secret-for-hs256-0123456789"


def unauthorized_code(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as raised:
        verifier.verify(token)
    return raised.value.code


def test_a_verified_token_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = mint_token(secret=SECRET, role="provider", sub="u-1", provider_id="p-1")
    first = verifier.verify(token)

    def no_more_decoding(*_: object, **__: object) -> None:
        raise AssertionError("a remembered token was decoded again")

    monkeypatch.setattr(jwt, "decode", no_more_decoding)
    assert verifier.verify(token) == first == Principal(sub="u-1", role=Role.PROVIDER, provider_id="p-1")


def test_a_remembered_token_expires_when_its_exp_says(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = mint_token(secret=SECRET, role="staff", sub="s-1", ttl_s=60)
    verifier.verify(token)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"] + CLOCK_LEEWAY_S

    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: expires_at - 1))
    assert verifier.verify(token).sub == "s-1"
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: expires_at))
    assert unauthorized_code(verifier, token) == "token_expired"


def test_a_refused_token_is_refused_every_time() -> None:
    verifier = TokenVerifier(secret=SECRET)
    forged = mint_token(secret="another-secret-of-the-same-length-0123", role="staff", sub="s-1")
    expired = mint_token(secret=SECRET, role="staff", sub="s-1", ttl_s=-CLOCK_LEEWAY_S - 1)
    for _ in range(2):
        assert unauthorized_code(verifier, forged) == "token_invalid"
        assert unauthorized_code(verifier, expired) == "token_expired"
