"""What checking a sign-in token costs the server, by key kind.

Every ``chat-auth`` (and ``?token=``, and an API call with a user's token) is one
`chatservice.chat.identity.Verifier.verify`: the signature check (PyJWT with
``cryptography``) and the claims.  This times it in this process for HS256, RS256
(2048-bit), ES256 and EdDSA (Ed25519) tokens, as many as it can in `--seconds`
each, and prints JSON: verifications per second of CPU and microseconds each.

    .venv/bin/python bench/token_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chatservice.chat.identity import Verifier

SECRET = "token-bench-secret-0123456789abcdef"


def _pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def kinds() -> dict[str, tuple[Verifier, str]]:
    """A verifier and a valid token for each key kind."""
    claims = {"sub": "u1", "name": "alice", "rooms": ["staff-*"], "exp": int(time.time()) + 3600}
    found = {"HS256": (Verifier(SECRET), jwt.encode(claims, SECRET, algorithm="HS256"))}
    for name, private in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ):
        found[name] = (Verifier(public_key=_pem(private)), jwt.encode(claims, private, name))
    return found


def measure(verifier: Verifier, token: str, seconds: float) -> dict[str, float]:
    verifier.verify(token)  # warm up (key objects, caches)
    n = 0
    started = time.process_time()
    while time.process_time() - started < seconds:
        for _ in range(50):
            verifier.verify(token)
        n += 50
    cpu = time.process_time() - started
    return {"verifications_per_cpu_s": round(n / cpu), "us_each": round(cpu / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per key kind")
    args = parser.parse_args()
    results = {name: measure(v, t, args.seconds) for name, (v, t) in kinds().items()}
    print(
        json.dumps(
            {"benchmark": "token verification", "seconds": args.seconds, "kinds": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
