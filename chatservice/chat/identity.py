"""Who a signed token (JWT) says a client is, and which rooms are private.

Tokens are checked with PyJWT: HS256 with ``--auth-secret``; RS256/RS384/RS512,
ES256/ES384/ES512 or EdDSA with ``--auth-public-key`` (a PEM public key, or a
JWKS whose keys a token's ``kid`` picks); never ``none``. The claims are in
docs/protocol.md ("Identity"). No I/O and no Twisted here.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from chatservice.chat.messages import ProtocolError, clean_username

if TYPE_CHECKING:
    from chatservice.config import Config

#: Rooms of two people (`dm_room`) start with this.
DM_PREFIX = "dm."

_SECRET_ALGORITHMS = ["HS256"]
_RSA_ALGORITHMS = ["RS256", "RS384", "RS512"]
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: What a public key may verify; an ``oct`` (secret) JWK is not one.
_PUBLIC_ALGORITHMS = {*_RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA"}

#: Malformed registered claims (sub, jti: PyJWT 2.10+; iat).
_CLAIM_ERRORS: tuple[type[Exception], ...] = (
    jwt.InvalidIssuedAtError,
    *(
        getattr(jwt.exceptions, name)
        for name in ("InvalidSubjectError", "InvalidJTIError")
        if hasattr(jwt.exceptions, name)
    ),
)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class AuthError(Exception):
    """A token is refused.

    Args:
        code: ``token-expired``, ``token-not-yet-valid``, ``token-wrong-audience``,
            ``token-wrong-issuer``, ``token-invalid`` (signature, key, algorithm,
            malformed) or ``token-claims`` (sub, name, rooms, admin).
        reason: What is wrong, for people.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token's claims.

    Attributes:
        user: The token's ``sub``: who it is, for good.
        name: The name shown in rooms: the ``name`` claim, else the ``sub``.
        rooms: Glob patterns (fnmatchcase) of the private rooms granted.
        admin: May moderate, and enter every private room (DMs excepted).
        expires: The ``exp`` claim (seconds since the epoch), None if it has none.
    """

    user: str
    name: str
    rooms: tuple[str, ...] = ()
    admin: bool = False
    expires: float | None = None

    def may_enter(self, room: str) -> bool:
        """Whether the token grants this private room.

        A DM room (`dm_room`) is never granted by a token: only its two people
        may enter it, which the hub knows, not the token.
        """
        if room.startswith(DM_PREFIX):
            return False
        return self.admin or any(fnmatchcase(room, pattern) for pattern in self.rooms)


def _algorithms_of(key: object) -> list[str]:
    """The JWS algorithms a public key verifies.

    Raises:
        ValueError: It is not an RSA, EC (P-256/384/521) or Ed25519/Ed448 public key.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return list(_RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return [_EC_ALGORITHMS[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ValueError("not an RSA, EC (P-256, P-384, P-521) or Ed25519 public key")


def _load_public_key(text: str) -> tuple[PublicKey | None, list[jwt.PyJWK]]:
    """A PEM public key, or the keys of a JWKS (``{"keys": [...]}``).

    Raises:
        ValueError: It is neither, or a JWKS holds a secret or private key.
    """
    if not text.lstrip().startswith("{"):
        try:
            key = load_pem_public_key(text.encode())
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key or a JWKS file") from None
        if not isinstance(key, PublicKey):
            raise ValueError("not an RSA, EC or Ed25519 public key")
        _algorithms_of(key)
        return key, []
    try:
        keys = jwt.PyJWKSet.from_json(text).keys
    except (ValueError, AttributeError, jwt.PyJWTError):
        raise ValueError("not a PEM public key or a JWKS file") from None
    for jwk in keys:
        if jwk.algorithm_name not in _PUBLIC_ALGORITHMS:
            raise ValueError(f"JWKS key {jwk.key_id!r} is not a public key (RSA, EC or OKP)")
        _algorithms_of(jwk.key)  # a private key is refused here
    return None, keys


class Verifier:
    """Checks tokens, and signs them when it has a secret.

    Args:
        secret: HS256 secret ("" for none).
        public_key: A PEM public key or a JWKS, as text ("" for none).
        audience: The ``aud`` a token must name ("" to name none).
        issuer: The ``iss`` a token must have ("" for any).
        leeway: Seconds of clock difference allowed for ``exp`` and ``nbf``.

    Raises:
        ValueError: Neither a secret nor a public key, or a bad public key.
    """

    def __init__(
        self,
        secret: str = "",
        public_key: str = "",
        audience: str = "",
        issuer: str = "",
        leeway: float = 10.0,
    ) -> None:
        if not secret and not public_key:
            raise ValueError("a secret or a public key is needed")
        self._secret = secret
        self._pem, self._jwks = _load_public_key(public_key) if public_key else (None, [])
        self._pem_algorithms = _algorithms_of(self._pem) if self._pem is not None else []
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway

    @property
    def can_mint(self) -> bool:
        """Whether `mint` can sign (there is a secret)."""
        return bool(self._secret)

    def verify(self, token: str) -> Identity:
        """Check a token's signature, times, audience and issuer; read its claims.

        Raises:
            AuthError: It is refused; `AuthError.code` says why.
        """
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience or None,
                issuer=self._issuer or None,
                leeway=self._leeway,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token-expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token-not-yet-valid", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token-wrong-audience", "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token-wrong-issuer", "the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as e:
            if e.claim == "aud":
                raise AuthError("token-wrong-audience", "the token names no audience") from None
            if e.claim == "iss":
                raise AuthError("token-wrong-issuer", "the token names no issuer") from None
            raise AuthError("token-claims", f"the token has no {e.claim!r} claim") from None
        except _CLAIM_ERRORS as e:
            raise AuthError("token-claims", f"the token's claims are malformed: {e}") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token-invalid", "the token's signature is not valid") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token-invalid", "the token's algorithm is not accepted") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("token-invalid", "not a valid signed token") from None
        return _identity(claims)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key and algorithms that may verify this token, by its header.

        Raises:
            AuthError: ``token-invalid``: no configured key fits.
            jwt.PyJWTError: The header is malformed.
        """
        if not isinstance(token, str):
            raise AuthError("token-invalid", "the token must be a string")
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if (alg == "HS256" and self._secret) or not (self._pem or self._jwks):
            return self._secret, _SECRET_ALGORITHMS
        if self._pem is not None:
            return self._pem, self._pem_algorithms
        kid = header.get("kid")
        found = [jwk for jwk in self._jwks if kid is not None and jwk.key_id == kid]
        if not found and len(self._jwks) == 1 and (kid is None or self._jwks[0].key_id is None):
            found = self._jwks
        if not found:
            raise AuthError("token-invalid", "the token's key id (kid) is unknown")
        # The key itself, not the PyJWK (accepted by jwt.decode from 2.9 only).
        return found[0].key, [found[0].algorithm_name]

    def mint(
        self,
        user: str,
        name: str | None = None,
        rooms: Sequence[str] = (),
        admin: bool = False,
        ttl: float = 3600.0,
    ) -> tuple[str, float]:
        """Sign an HS256 token that `verify` accepts (with `audience`/`issuer` if set).

        Returns:
            The token and its expiry (seconds since the epoch).

        Raises:
            RuntimeError: There is no secret to sign with.
            ValueError: An empty user, a name that is not a username, a room
                that is not a string, or a ttl that is not positive.
        """
        if not self._secret:
            raise RuntimeError("cannot sign tokens without a secret (--auth-secret)")
        if not isinstance(user, str) or not user:
            raise ValueError("user must be a non-empty string")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError("ttl must be positive")
        if isinstance(rooms, str) or not all(isinstance(room, str) for room in rooms):
            raise ValueError("rooms must be a list of strings")
        now = int(time.time())
        expires = now + max(1, round(ttl))
        claims: dict[str, Any] = {
            "sub": user,
            "iat": now,
            "exp": expires,
            "rooms": list(rooms),
            "admin": bool(admin),
        }
        if name is not None:
            try:
                claims["name"] = clean_username(name)
            except ProtocolError as e:
                raise ValueError(e.reason) from None
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm="HS256"), float(expires)


def _identity(claims: dict[str, Any]) -> Identity:
    """An `Identity` from verified claims.

    Raises:
        AuthError: ``token-claims``.
    """
    user = claims["sub"]
    if not isinstance(user, str) or not user:
        raise AuthError("token-claims", "the token's sub must be a non-empty string")
    try:
        name = clean_username(claims.get("name", user))
    except ProtocolError as e:
        what = "name" if "name" in claims else "sub (there is no name)"
        raise AuthError(
            "token-claims", f"the token's {what} is not a username: {e.reason}"
        ) from None
    rooms = claims.get("rooms", [])
    if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
        raise AuthError("token-claims", "the token's rooms must be a list of strings")
    admin = claims.get("admin", False)
    if not isinstance(admin, bool):
        raise AuthError("token-claims", "the token's admin must be true or false")
    exp = claims.get("exp")
    return Identity(user, name, tuple(rooms), admin, None if exp is None else float(exp))


@dataclass(frozen=True)
class AuthPolicy:
    """The service's authentication settings (``--auth`` and friends).

    Attributes:
        mode: ``off`` (no tokens), ``optional`` or ``required``.
        verifier: Checks tokens; None when `mode` is off.
        private_rooms: ``--private-room`` glob patterns (fnmatchcase).
        timeout: With ``required``: seconds a connection may stay unauthenticated.
        leeway: Seconds after ``exp`` before a connection is closed as expired.
        refresh_url: Where the web client gets a fresh token ("" for nowhere).
    """

    mode: str
    verifier: Verifier | None
    private_rooms: tuple[str, ...]
    timeout: float
    leeway: float
    refresh_url: str

    def is_private(self, room: str) -> bool:
        """Whether entering `room` needs a grant: a ``--private-room`` or a DM room."""
        if self.mode == "off":
            return False
        return room.startswith(DM_PREFIX) or any(
            fnmatchcase(room, pattern) for pattern in self.private_rooms
        )

    @classmethod
    def from_config(cls, config: Config) -> AuthPolicy:
        """The policy of a `Config`; reads ``auth_public_key`` (a file).

        Raises:
            ValueError: The public key file cannot be read or is not a key.
        """
        if config.auth == "off":
            return OFF
        public_key = ""
        if config.auth_public_key:
            try:
                public_key = Path(config.auth_public_key).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"--auth-public-key {config.auth_public_key!r}: {e}") from None
        verifier = Verifier(
            config.auth_secret,
            public_key,
            config.auth_audience,
            config.auth_issuer,
            config.auth_leeway,
        )
        return cls(
            config.auth,
            verifier,
            config.private_rooms,
            config.auth_timeout,
            config.auth_leeway,
            config.auth_refresh_url,
        )


#: No authentication: every room public, no tokens (the default).
OFF = AuthPolicy("off", None, (), 5.0, 10.0, "")


def dm_room(a: str, b: str) -> str:
    """The room of the direct messages between users `a` and `b` (their ``sub``\\ s).

    The same for (a, b) and (b, a); a valid room name (``dm.`` and 32 hex digits).
    """
    low, high = sorted((a, b))
    return DM_PREFIX + hashlib.sha256(f"{low}\0{high}".encode()).hexdigest()[:32]
