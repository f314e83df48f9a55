"""Signed verification answers. Signatures made here are checked with joserfc and with raw
cryptography (the signer uses PyJWT), and joserfc-made signatures are checked by ours."""

import base64
import io
import json
import stat
import threading

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws as joserfc_jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, OKPKey
from jwt.algorithms import OKPAlgorithm
from jwt.api_jws import PyJWS

from services.certificate.signing import (
    DEV_KEYS_FILE,
    AnswerSigner,
    canonical_json,
    generate_signing_key,
    main,
    verify_detached,
)

# joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; the design fixes EdDSA.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

ANSWER = {
    "certificate_id": "c-7f3a",
    "state": "valid",
    "revoked_at": None,
    "revocation_reason": None,
    "certification": {"name": "Brandskydd Grund"},
    "provider": {"name": "Åkes Utbildning AB", "logo_url": None, "linkedin_url": None},
    "issued_at": "2024-03-07T14:30:00+00:00",
    "holder": {"name": None, "initials": "A. S."},
    "file_matches": None,
    "checked_at": "2025-01-02T03:04:05+00:00",
}


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signer(*keys: dict) -> AnswerSigner:
    return AnswerSigner({"keys": list(keys)})


def _verified_by_joserfc(answer: dict, jws: str, jwks: dict) -> bool:
    try:
        joserfc_jws.deserialize_compact(
            jws, KeySet.import_key_set(jwks), algorithms=["EdDSA"], payload=canonical_json(answer)
        )
    except BadSignatureError:
        return False
    return True


def test_signature_is_a_detached_compact_jws_that_joserfc_verifies():
    key = generate_signing_key("k-2025")
    signer = _signer(key)
    signature = signer.sign(ANSWER)

    header_b64, payload_b64, _ = signature.split(".")
    assert payload_b64 == ""
    assert json.loads(_b64decode(header_b64)) == {"alg": "EdDSA", "kid": "k-2025"}
    assert _verified_by_joserfc(ANSWER, signature, signer.jwks())


def test_signature_is_the_one_pyjwt_makes():
    """Signed without PyJWT's encode, for speed: the same bytes all the same."""
    key = generate_signing_key("k-2025")
    header, _, signature = (
        PyJWS()
        .encode(
            canonical_json(ANSWER),
            OKPAlgorithm.from_jwk(key),
            algorithm="EdDSA",
            headers={"kid": "k-2025", "typ": None},
        )
        .split(".")
    )
    assert _signer(key).sign(ANSWER) == f"{header}..{signature}"


def test_signature_checks_with_raw_ed25519_over_the_canonical_answer():
    signer = _signer(generate_signing_key())
    header_b64, _, signature_b64 = signer.sign(ANSWER).split(".")
    (published,) = signer.jwks()["keys"]
    public_key = Ed25519PublicKey.from_public_bytes(_b64decode(published["x"]))
    signing_input = f"{header_b64}.{_b64encode(canonical_json(ANSWER))}".encode("ascii")

    public_key.verify(_b64decode(signature_b64), signing_input)
    with pytest.raises(InvalidSignature):
        public_key.verify(_b64decode(signature_b64), signing_input + b"x")


def test_verify_detached_accepts_a_signature_made_by_joserfc():
    private_jwk = generate_signing_key("joserfc-key")
    signer = _signer(private_jwk)
    attached = joserfc_jws.serialize_compact(
        {"alg": "EdDSA", "kid": "joserfc-key"},
        canonical_json(ANSWER),
        OKPKey.import_key(private_jwk),
        algorithms=["EdDSA"],
    )
    detached = joserfc_jws.detach_content(attached)

    assert verify_detached(ANSWER, detached, signer.jwks())
    assert not verify_detached({**ANSWER, "state": "revoked"}, detached, signer.jwks())


def _tampered_answers():
    yield "state changed", {**ANSWER, "state": "revoked"}
    yield "nested value changed", {**ANSWER, "certification": {"name": "Brandskydd Avancerad"}}
    yield "holder name revealed", {**ANSWER, "holder": {"name": "Anna Svensson", "initials": "A. S."}}
    yield "null became false", {**ANSWER, "file_matches": False}
    yield "key added", {**ANSWER, "email": "anna@example.se"}
    yield "key removed", {k: v for k, v in ANSWER.items() if k != "revocation_reason"}


@pytest.mark.parametrize(("change", "tampered"), list(_tampered_answers()))
def test_tampered_answer_fails(change, tampered):
    signer = _signer(generate_signing_key())
    signature = signer.sign(ANSWER)

    assert verify_detached(ANSWER, signature, signer.jwks())
    assert not verify_detached(tampered, signature, signer.jwks()), change
    assert not _verified_by_joserfc(tampered, signature, signer.jwks()), change


def test_key_order_does_not_matter():
    signer = _signer(generate_signing_key())
    reordered = dict(reversed(list(ANSWER.items())))
    assert verify_detached(reordered, signer.sign(ANSWER), signer.jwks())


def test_signature_by_a_foreign_key_with_the_same_kid_fails():
    ours = _signer(generate_signing_key("shared-kid"))
    forger = _signer(generate_signing_key("shared-kid"))
    assert not verify_detached(ANSWER, forger.sign(ANSWER), ours.jwks())


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "not a jws",
        "a..b..c",
        "%%%..%%%",
        # alg "none" with an empty signature
        _b64encode(b'{"alg":"none","kid":"k"}') + "..",
        # an HMAC header, the classic algorithm confusion
        _b64encode(b'{"alg":"HS256","kid":"k"}') + ".." + _b64encode(b"\0" * 32),
    ],
)
def test_malformed_signatures_fail(malformed):
    signer = _signer(generate_signing_key("k"))
    assert not verify_detached(ANSWER, malformed, signer.jwks())


def test_an_attached_jws_is_not_a_detached_signature():
    signer = _signer(generate_signing_key())
    header_b64, _, signature_b64 = signer.sign(ANSWER).split(".")
    attached = f"{header_b64}.{_b64encode(canonical_json(ANSWER))}.{signature_b64}"
    assert not verify_detached(ANSWER, attached, signer.jwks())


def test_rotated_key_set_still_verifies_answers_signed_by_the_old_key():
    old_key, new_key = generate_signing_key("2024"), generate_signing_key("2025")
    signed_before_rotation = _signer(old_key).sign(ANSWER)

    rotated = _signer(new_key, old_key)
    signed_after_rotation = rotated.sign(ANSWER)

    assert [key["kid"] for key in rotated.jwks()["keys"]] == ["2025", "2024"]
    assert rotated.active_kid == "2025"
    assert verify_detached(ANSWER, signed_before_rotation, rotated.jwks())
    assert _verified_by_joserfc(ANSWER, signed_before_rotation, rotated.jwks())
    assert verify_detached(ANSWER, signed_after_rotation, rotated.jwks())
    # A verifier still holding only the old set cannot check the new key's answers.
    assert not verify_detached(ANSWER, signed_after_rotation, _signer(old_key).jwks())


def test_published_keys_are_public_only():
    private_jwk = generate_signing_key("k1")
    (published,) = _signer(private_jwk).jwks()["keys"]
    assert published == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": private_jwk["x"],
        "kid": "k1",
        "alg": "EdDSA",
        "use": "sig",
    }


def test_generated_kid_defaults_to_the_key_thumbprint():
    key = generate_signing_key()
    assert key["kid"] == OKPKey.import_key(key).thumbprint()
    assert generate_signing_key()["kid"] != key["kid"]


def test_configured_keys_are_used_and_no_dev_key_is_written(tmp_path):
    key = generate_signing_key("prod-1")
    signer = AnswerSigner.from_settings(signing_keys_json=json.dumps({"keys": [key]}), data_dir=tmp_path)
    assert signer.jwks()["keys"][0]["x"] == key["x"]
    assert not (tmp_path / DEV_KEYS_FILE).exists()


@pytest.mark.parametrize("empty_setting", ["", "  \n"])
def test_dev_key_is_created_once_and_reused(tmp_path, empty_setting):
    first = AnswerSigner.from_settings(signing_keys_json=empty_setting, data_dir=tmp_path)
    key_file = tmp_path / DEV_KEYS_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert list(key_file.parent.iterdir()) == [key_file]  # no temporary file left behind

    after_restart = AnswerSigner.from_settings(signing_keys_json=empty_setting, data_dir=tmp_path)
    assert after_restart.jwks() == first.jwks()
    assert verify_detached(ANSWER, first.sign(ANSWER), after_restart.jwks())


def test_processes_starting_together_share_one_dev_key(tmp_path):
    barrier = threading.Barrier(4)
    key_sets = []

    def start():
        barrier.wait()
        key_sets.append(AnswerSigner.from_settings(signing_keys_json="", data_dir=tmp_path).jwks())

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(key_sets) == 4 and all(key_set == key_sets[0] for key_set in key_sets)


def test_corrupt_dev_key_file_is_named(tmp_path):
    key_file = tmp_path / DEV_KEYS_FILE
    key_file.parent.mkdir(parents=True)
    key_file.write_text("{broken")
    with pytest.raises(ValueError) as raised:
        AnswerSigner.from_settings(signing_keys_json="", data_dir=tmp_path)
    assert str(key_file) in str(raised.value) and "VERIFY_SIGNING_KEYS" in str(raised.value)


def _public(jwk: dict) -> dict:
    return {name: value for name, value in jwk.items() if name != "d"}


SECRET = generate_signing_key("secret-kid")
OTHER = generate_signing_key("other")


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ('{"keys": [', "not valid JSON"),
        ("[1, 2]", "must be a JWK set"),
        ("{}", "at least one key"),
        ('{"keys": []}', "at least one key"),
        (json.dumps({"keys": ["abc"]}), "not a JSON object"),
        (json.dumps({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]}), "not an Ed25519 key"),
        (json.dumps({"keys": [{**SECRET, "crv": "X25519"}]}), "not an Ed25519 key"),
        (json.dumps({"keys": [{**SECRET, "alg": "ES256"}]}), '"alg"'),
        (json.dumps({"keys": [{k: v for k, v in SECRET.items() if k != "kid"}]}), 'no "kid"'),
        (json.dumps({"keys": [_public(SECRET)]}), "not a private key"),
        (json.dumps({"keys": [{**SECRET, "x": OTHER["x"]}]}), "malformed"),
        (json.dumps({"keys": [{**SECRET, "d": SECRET["d"][:-4]}]}), "malformed"),
        (json.dumps({"keys": [OTHER, {**SECRET, "d": "!!not base64!!"}]}), "key 2"),
        (json.dumps({"keys": [SECRET, {**OTHER, "kid": "secret-kid"}]}), "unique"),
    ],
)
def test_bad_setting_names_the_setting_and_the_problem_without_key_material(tmp_path, setting, problem):
    with pytest.raises(ValueError) as raised:
        AnswerSigner.from_settings(signing_keys_json=setting, data_dir=tmp_path)
    message = str(raised.value)
    assert "VERIFY_SIGNING_KEYS" in message and problem in message
    assert SECRET["d"] not in message and SECRET["d"][:-4] not in message and OTHER["d"] not in message
    # A traceback must not show a chained library error either (those may quote the key).
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": {"d": True, "c": None}, "e": 'Å\n"x"', "f": [2, 1]}) == (
        '{"a":{"c":null,"d":true},"b":1,"e":"Å\\n\\"x\\"","f":[2,1]}'.encode()
    )


@pytest.mark.parametrize("not_a_number", [float("nan"), float("inf")])
def test_canonical_json_refuses_non_numbers(not_a_number):
    with pytest.raises(ValueError):
        canonical_json({"value": not_a_number})


def test_main_prints_a_usable_private_key_set(capsys, tmp_path):
    main(["--kid", "fresh"])
    printed = capsys.readouterr().out
    signer = AnswerSigner.from_settings(signing_keys_json=printed, data_dir=tmp_path)
    assert signer.active_kid == "fresh"
    assert verify_detached(ANSWER, signer.sign(ANSWER), signer.jwks())


def test_main_rotate_puts_the_new_key_first_and_keeps_the_old(capsys, monkeypatch, tmp_path):
    old_key = generate_signing_key("old")
    signed_with_old = _signer(old_key).sign(ANSWER)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"keys": [old_key]})))

    main(["--rotate", "--kid", "new"])

    rotated = AnswerSigner.from_settings(signing_keys_json=capsys.readouterr().out, data_dir=tmp_path)
    assert [key["kid"] for key in rotated.jwks()["keys"]] == ["new", "old"]
    assert verify_detached(ANSWER, signed_with_old, rotated.jwks())


def test_main_rotate_rejects_a_bad_current_set_without_echoing_it(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"keys": [{**SECRET, "x": OTHER["x"]}]})))
    with pytest.raises(SystemExit) as exited:
        main(["--rotate"])
    assert exited.value.code == 2
    error_output = capsys.readouterr().err
    assert "malformed" in error_output and SECRET["d"] not in error_output
