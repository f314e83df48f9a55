"""Signed verification answers: detached JWS (EdDSA / Ed25519) over the canonical JSON answer.

Anyone holding the published key set (GET /.well-known/jwks.json) can check a saved answer
offline. Keys come from VERIFY_SIGNING_KEYS, a JWK set of private Ed25519 keys: the first one
signs, all of them are published, so answers signed before a key rotation still verify as long
as the old key stays in the set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import thumbprint
from jwt.algorithms import OKPAlgorithm
from jwt.api_jws import PyJWS
from jwt.utils import base64url_encode

ALGORITHM = "EdDSA"
SETTING_NAME = "VERIFY_SIGNING_KEYS"
DEV_KEYS_FILE = Path("keys") / "verify-signing.jwks.json"

log = logging.getLogger(__name__)
_jws = PyJWS()


def canonical_json(answer: dict) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8, no NaN or infinity.

    This equals RFC 8785 (JCS) for what answers hold (strings, booleans, null, integers and
    nested objects with ASCII keys), so verifiers in other languages can use a JCS library.
    """
    return json.dumps(answer, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def generate_signing_key(kid: str | None = None) -> dict:
    """A new private Ed25519 JWK; its kid defaults to the RFC 7638 thumbprint of the public key."""
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate(), as_dict=True)
    public_members = {name: jwk[name] for name in ("kty", "crv", "x")}
    jwk["kid"] = kid or thumbprint(public_members)
    jwk.update(alg=ALGORITHM, use="sig")
    return jwk


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    def public_jwk(self) -> dict:
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg=ALGORITHM, use="sig")
        return jwk


class AnswerSigner:
    """Signs verification answers with the active key and publishes every configured key."""

    def __init__(self, private_key_set: dict, *, source: str = SETTING_NAME) -> None:
        self._keys = _parse_private_key_set(private_key_set, source)
        # The protected header of every signature, as PyJWT writes it (sorted keys, no whitespace).
        self._header = base64url_encode(
            json.dumps({"alg": ALGORITHM, "kid": self.active_kid}, separators=(",", ":"), sort_keys=True).encode()
        )

    @classmethod
    def from_settings(cls, *, signing_keys_json: str, data_dir: Path) -> AnswerSigner:
        if signing_keys_json.strip():
            return cls(_loads(signing_keys_json, SETTING_NAME))
        path = Path(data_dir) / DEV_KEYS_FILE
        source = f"{path} (development key used because {SETTING_NAME} is empty)"
        return cls(_loads(_load_or_create_dev_key_set(path), source), source=source)

    @property
    def active_kid(self) -> str:
        return self._keys[0].kid

    def sign(self, answer: dict) -> str:
        """Detached compact JWS (RFC 7515 appendix F): "<header>..<signature>".

        The same as PyJWT's (Ed25519 signatures are deterministic), without its building and checking
        the same header for each answer: that took about as long as the signature itself.
        """
        signing_input = self._header + b"." + base64url_encode(canonical_json(answer))
        signature = base64url_encode(self._keys[0].private_key.sign(signing_input))
        return f"{self._header.decode()}..{signature.decode()}"

    def jwks(self) -> dict:
        return {"keys": [key.public_jwk() for key in self._keys]}


def verify_detached(answer: dict, jws: str, jwks: dict) -> bool:
    """True when `jws` is a valid detached signature over `answer` by a key in `jwks`."""
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1] != "":
        return False
    payload = base64url_encode(canonical_json(answer)).decode("ascii")
    attached = f"{parts[0]}.{payload}.{parts[2]}"
    try:
        kid = jwt.get_unverified_header(attached).get("kid")
        public_key = jwt.PyJWKSet.from_dict(jwks)[kid]
        _jws.decode_complete(attached, public_key.key, algorithms=[ALGORITHM])
    except (jwt.PyJWTError, KeyError, TypeError, AttributeError):
        return False
    return True


def _loads(text: str, source: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        # The position only: the decoder's message never quotes the text, but keep it that way.
        raise ValueError(f"{source} is not valid JSON (line {error.lineno}, column {error.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f'{source} must be a JWK set: a JSON object {{"keys": [...]}}')
    return value


def _parse_private_key_set(key_set: dict, source: str) -> list[_SigningKey]:
    keys = key_set.get("keys") if isinstance(key_set, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f'{source} must be a JWK set with at least one key: {{"keys": [...]}}')
    parsed = [_parse_private_key(jwk, f"{source}: key {index + 1}") for index, jwk in enumerate(keys)]
    kids = [key.kid for key in parsed]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise ValueError(f"{source}: key ids must be unique, repeated: {', '.join(duplicates)}")
    return parsed


def _parse_private_key(jwk: object, where: str) -> _SigningKey:
    """Checks one private JWK; messages name the problem but never quote key material."""
    if not isinstance(jwk, dict):
        raise ValueError(f"{where} is not a JSON object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f'{where} is not an Ed25519 key (need "kty": "OKP", "crv": "Ed25519")')
    if jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError(f'{where} has "alg" other than "{ALGORITHM}"')
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f'{where} has no "kid" (key id)')
    if not isinstance(jwk.get("d"), str) or not isinstance(jwk.get("x"), str):
        raise ValueError(f'{where} ("{kid}") is not a private key: "d" and "x" are required')
    try:
        private_key = OKPAlgorithm.from_jwk(jwk)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ValueError(
            f'{where} ("{kid}") is malformed: "d" and "x" must be the base64url-encoded '
            "private key and its matching public key"
        ) from None
    return _SigningKey(kid=kid, private_key=private_key)


def _load_or_create_dev_key_set(path: Path) -> str:
    """Reads the development key set, creating it (mode 0600) on first use.

    Created under a temporary name and linked into place, so two processes starting at once
    end up with the same key and nobody ever reads a half-written file.
    """
    if path.exists():
        return path.read_text(encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    content = json.dumps({"keys": [generate_signing_key()]}, indent=2) + "\n"
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".verify-signing-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mkstemp creates it 0600
            file.write(content)
        os.link(temporary, path)
        log.warning(
            "created a development signing key for verification answers at %s; set %s in production",
            path,
            SETTING_NAME,
        )
    except FileExistsError:
        pass  # another process created it first: use that one
    finally:
        os.unlink(temporary)
    return path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Prints a private JWK set for VERIFY_SIGNING_KEYS (keep it secret)."""
    parser = argparse.ArgumentParser(
        prog="python -m services.certificate.signing",
        description=f"Print a private Ed25519 JWK set for {SETTING_NAME}.",
    )
    parser.add_argument("--kid", help="key id of the new key (default: its RFC 7638 thumbprint)")
    parser.add_argument(
        "--rotate",
        action="store_true",
        help=f"read the current {SETTING_NAME} from standard input and print it with the new "
        "key first (signing) and the old keys kept (still published, so old answers verify)",
    )
    arguments = parser.parse_args(argv)
    keys = [generate_signing_key(arguments.kid)]
    if arguments.rotate:
        source = f"{SETTING_NAME} on standard input"
        try:
            current = _loads(sys.stdin.read(), source)
            _parse_private_key_set(current, source)
            keys += current["keys"]
            _parse_private_key_set({"keys": keys}, "the rotated key set")
        except ValueError as error:
            parser.error(str(error))
    print(json.dumps({"keys": keys}, separators=(",", ":")))


if __name__ == "__main__":
    main()
