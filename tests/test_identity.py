"""Token verification (chatservice.chat.identity): tokens signed here with PyJWT, no reactor."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chatservice.chat.identity import OFF, AuthError, AuthPolicy, Identity, Verifier, dm_room
from chatservice.chat.messages import check_room
from chatservice.config import Config

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
OTHER_SECRET = "another-secret-that-is-at-least-32-bytes-long"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u-1", "name": "alice", "exp": int(time.time()) + 600, **extra}


def refused(verifier: Verifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert caught.value.reason  # a sentence for people
    return caught.value.code


def test_hs256_with_the_secret() -> None:
    exp = int(time.time()) + 600
    token = jwt.encode(claims(exp=exp, rooms=["team-*"], admin=True), SECRET, algorithm="HS256")
    identity = Verifier(secret=SECRET).verify(token)
    assert identity == Identity("u-1", "alice", ("team-*",), True, float(exp))


def test_defaults_no_name_means_the_sub_and_no_exp_never_expires() -> None:
    token = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    assert Verifier(secret=SECRET).verify(token) == Identity("bob", "bob", (), False, None)


def test_name_is_cleaned_like_a_username() -> None:
    token = jwt.encode(claims(name="  alice  "), SECRET, algorithm="HS256")
    assert Verifier(secret=SECRET).verify(token).name == "alice"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ES256", "EdDSA"],
)
def test_ec_and_ed25519_public_keys(make: Any) -> None:
    key = make()
    algorithm = "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey) else "ES256"
    verifier = Verifier(public_key=pem(key))
    assert verifier.verify(jwt.encode(claims(), key, algorithm=algorithm)).user == "u-1"
    other = make()
    assert refused(verifier, jwt.encode(claims(), other, algorithm=algorithm)) == "token-invalid"


def test_rs256_with_a_pem_public_key(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = Verifier(public_key=pem(rsa_key))
    assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).name == "alice"
    assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS512")).name == "alice"
    wrong_key = jwt.encode(claims(), other_rsa_key, algorithm="RS256")
    assert refused(verifier, wrong_key) == "token-invalid"
    # Without a secret, HS256 tokens are not checked with anything.
    assert refused(verifier, jwt.encode(claims(), SECRET, algorithm="HS256")) == "token-invalid"
    assert not verifier.can_mint


def test_key_confusion_the_public_key_as_an_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem(rsa_key)
    # PyJWT refuses to sign with a PEM as HMAC secret; an attacker does it by hand.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(admin=True)).encode())
    import hashlib
    import hmac

    signing_input = f"{header}.{payload}".encode()
    signature = b64(hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest())
    forged = f"{header}.{payload}.{signature}"
    assert refused(Verifier(public_key=public_pem), forged) == "token-invalid"
    # With a secret as well, HS256 is checked with the secret, never the key.
    both = Verifier(secret=SECRET, public_key=public_pem)
    assert refused(both, forged) == "token-invalid"
    assert both.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).user == "u-1"
    assert both.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user == "u-1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: PrivateKey, kid: str | None) -> dict[str, Any]:
    algorithm: Any = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    if kid is not None:
        data["kid"] = kid
    return data


def test_a_jwks_picks_the_key_by_kid(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    verifier = Verifier(public_key=json.dumps({"keys": [jwk(rsa_key, "r1"), jwk(ec_key, "e1")]}))
    token = jwt.encode(claims(sub="by-rsa"), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert verifier.verify(token).user == "by-rsa"
    token = jwt.encode(claims(sub="by-ec"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert verifier.verify(token).user == "by-ec"
    # The wrong key for the kid, an unknown kid, no kid among several keys.
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "r1"})
    assert refused(verifier, token) == "token-invalid"
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert refused(verifier, token) == "token-invalid"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
    assert refused(verifier, token) == "token-invalid"
    assert refused(verifier, jwt.encode(claims(), rsa_key, algorithm="RS256")) == "token-invalid"


def test_a_jwks_of_one_key_needs_no_kid(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = Verifier(public_key=json.dumps({"keys": [jwk(rsa_key, None)]}))
    assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).user == "u-1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
        '{"keys": []}',
        '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
        "[1, 2]",
    ],
)
def test_bad_public_keys_are_refused_at_start(text: str) -> None:
    with pytest.raises(ValueError):
        Verifier(public_key=text)


def test_a_private_key_in_a_jwks_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    with pytest.raises(ValueError):
        Verifier(public_key=json.dumps({"keys": [private]}))


def test_times_with_leeway() -> None:
    verifier = Verifier(secret=SECRET, leeway=10)
    now = int(time.time())
    assert refused(verifier, sign(exp=now - 60)) == "token-expired"
    assert verifier.verify(sign(exp=now - 5)).expires == float(now - 5)  # within leeway
    assert refused(verifier, sign(nbf=now + 60)) == "token-not-yet-valid"
    assert verifier.verify(sign(nbf=now + 5)).user == "u-1"  # within leeway
    assert refused(Verifier(secret=SECRET, leeway=0), sign(nbf=now + 5)) == "token-not-yet-valid"


def sign(secret: str = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(**extra), secret, algorithm="HS256")


def test_wrong_secret_tampered_malformed_and_alg_none() -> None:
    verifier = Verifier(secret=SECRET)
    assert refused(verifier, sign(OTHER_SECRET)) == "token-invalid"
    header, payload, signature = sign().split(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    assert refused(verifier, f"{header}.{tampered}.{signature}") == "token-invalid"
    # Claims changed and re-encoded, the signature kept.
    admin = b64(json.dumps(claims(admin=True)).encode())
    assert refused(verifier, f"{header}.{admin}.{signature}") == "token-invalid"
    for malformed in ("", "not-a-token", "a.b.c", "a.b", "....."):
        assert refused(verifier, malformed) == "token-invalid"
    assert refused(verifier, 42) == "token-invalid"  # type: ignore[arg-type]
    unsigned = jwt.encode(claims(admin=True), "", algorithm="none")
    assert refused(verifier, unsigned) == "token-invalid"
    by_hand = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode()) + "."
    assert refused(verifier, by_hand) == "token-invalid"


def test_audience_and_issuer() -> None:
    verifier = Verifier(secret=SECRET, audience="chat", issuer="https://id.example.com")
    good = sign(aud="chat", iss="https://id.example.com")
    assert verifier.verify(good).user == "u-1"
    assert refused(verifier, sign(aud="other", iss="https://id.example.com")) == (
        "token-wrong-audience"
    )
    assert refused(verifier, sign(iss="https://id.example.com")) == "token-wrong-audience"
    assert refused(verifier, sign(aud="chat", iss="https://evil.example.com")) == (
        "token-wrong-issuer"
    )
    assert refused(verifier, sign(aud="chat")) == "token-wrong-issuer"
    # Without --auth-issuer any issuer will do.
    assert Verifier(secret=SECRET).verify(sign(iss="anyone")).user == "u-1"


@pytest.mark.parametrize(
    "token_claims",
    [
        {"name": "alice"},  # no sub
        {"sub": ""},
        {"sub": 7},
        {"sub": "u-1", "name": ""},
        {"sub": "u-1", "name": "x" * 33},
        {"sub": "u-1", "name": "a\u0000b"},
        {"sub": "u-1", "name": 5},
        {"sub": "x" * 40},  # no name, and the sub is no username
        {"sub": "u-1", "rooms": "team-a"},
        {"sub": "u-1", "rooms": ["team-a", 3]},
        {"sub": "u-1", "admin": "yes"},
        {"sub": "u-1", "admin": 1},
    ],
)
def test_bad_claims(token_claims: dict[str, Any]) -> None:
    token = jwt.encode(token_claims, SECRET, algorithm="HS256")
    assert refused(Verifier(secret=SECRET), token) == "token-claims"


def test_mint_round_trips_through_verify() -> None:
    verifier = Verifier(secret=SECRET, audience="chat", issuer="chatservice")
    assert verifier.can_mint
    before = time.time()
    token, expires = verifier.mint("u-9", name="Zoe", rooms=["ops", "team-*"], admin=True, ttl=60)
    assert before + 59 <= expires <= time.time() + 61
    assert verifier.verify(token) == Identity("u-9", "Zoe", ("ops", "team-*"), True, expires)
    token, expires = verifier.mint("zed")  # an hour by default
    assert verifier.verify(token) == Identity("zed", "zed", (), False, expires)
    assert expires >= before + 3599
    # Another service's secret does not accept it.
    assert refused(Verifier(secret=OTHER_SECRET), token) == "token-invalid"


def test_mint_needs_a_secret_and_good_values(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(RuntimeError):
        Verifier(public_key=pem(rsa_key)).mint("u-1")
    verifier = Verifier(secret=SECRET)
    for bad in (
        {"user": ""},
        {"user": "u", "name": ""},
        {"user": "u", "ttl": 0},
        {"user": "u", "rooms": "team"},
    ):
        with pytest.raises(ValueError):
            verifier.mint(**bad)


def test_a_verifier_needs_a_secret_or_a_key() -> None:
    with pytest.raises(ValueError):
        Verifier()


def test_may_enter() -> None:
    user = Identity("u-1", "alice", ("team-*", "ops"))
    assert user.may_enter("team-a") and user.may_enter("ops")
    assert not user.may_enter("opsx") and not user.may_enter("Team-a")
    assert not Identity("u-1", "alice").may_enter("ops")
    admin = Identity("root", "root", (), admin=True)
    assert admin.may_enter("ops") and admin.may_enter("anything")
    # DM rooms are not granted by tokens, not even "*" or admin.
    room = dm_room("u-1", "u-2")
    assert not admin.may_enter(room)
    assert not Identity("u-1", "alice", ("*",)).may_enter(room)


def test_dm_room_is_symmetric_and_a_room_name() -> None:
    room = dm_room("alice", "bob")
    assert room == dm_room("bob", "alice")
    assert room.startswith("dm.") and len(room) == 35
    assert check_room(room) == room
    assert dm_room("alice", "carol") != room
    # The separator keeps ("a", "b\0c")-like pairs apart from ("a\0b", "c").
    assert dm_room("ab", "c") != dm_room("a", "bc")


def test_policy_is_private() -> None:
    policy = AuthPolicy("optional", Verifier(secret=SECRET), ("team-*", "ops"), 5.0, 10.0, "")
    assert policy.is_private("team-x") and policy.is_private("ops")
    assert policy.is_private(dm_room("a", "b"))
    assert not policy.is_private("lobby") and not policy.is_private("teams")
    assert not OFF.is_private(dm_room("a", "b"))
    assert OFF.mode == "off" and OFF.verifier is None


def test_policy_from_config(tmp_path: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    assert AuthPolicy.from_config(Config()) is OFF
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem(rsa_key))
    config = Config(
        auth="required",
        auth_public_key=str(key_file),
        auth_audience="chat",
        auth_leeway=3,
        auth_timeout=2,
        auth_refresh_url="/token",
        private_rooms=("ops",),
    )
    policy = AuthPolicy.from_config(config)
    assert (policy.mode, policy.private_rooms, policy.timeout, policy.leeway) == (
        "required",
        ("ops",),
        2,
        3,
    )
    assert policy.refresh_url == "/token"
    assert policy.verifier is not None and not policy.verifier.can_mint
    token = jwt.encode(claims(aud="chat"), rsa_key, algorithm="RS256")
    assert policy.verifier.verify(token).user == "u-1"
    key_file.unlink()
    with pytest.raises(ValueError):
        AuthPolicy.from_config(config)


@pytest.mark.parametrize(
    "fields",
    [
        {"auth": "maybe"},
        {"auth": "optional"},  # no secret, no key
        {"private_rooms": ("ops",)},  # with auth off
        {"auth": "optional", "auth_secret": SECRET, "auth_leeway": -1},
        {"auth": "optional", "auth_secret": SECRET, "auth_timeout": 0},
    ],
)
def test_config_refuses_auth_settings_that_do_not_go_together(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Config(**fields)
