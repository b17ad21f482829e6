"""Password hashing (bcrypt) and machine API keys.

Passwords are SHA-256'd and base64'd before bcrypt: bcrypt only reads 72 bytes and rejects NUL bytes, and a
pre-hash lifts both limits without weakening it (the digest keeps the full entropy of the password).

API keys look like ``eva_<prefix>_<secret>``: the prefix (8 hex chars) is stored in clear to find the row,
the whole key only as a SHA-256 digest.  Keys carry 256 bits of randomness, so a fast hash is safe for them
(a slow KDF is for guessable secrets such as passwords).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import bcrypt

DEFAULT_ROUNDS = 12
API_KEY_PREFIX = "eva_"


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def hash_password(password: str, *, rounds: int = DEFAULT_ROUNDS) -> str:
    """A bcrypt hash (slow on purpose: ~0.25 s at 12 rounds; call it from a worker thread)."""
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), password_hash.encode("ascii"))
    except ValueError:  # a corrupt or foreign hash in the database: treat as a mismatch, never as a crash
        return False


_DUMMY_HASH: str | None = None


def burn_password_check(password: str) -> None:
    """Spend the time of a real check, so a login for an unknown user takes as long as a wrong password
    (otherwise response times reveal which usernames exist)."""
    global _DUMMY_HASH  # noqa: PLW0603 - computed once, lazily (it costs one bcrypt round)
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    verify_password(password, _DUMMY_HASH)


def new_api_key() -> tuple[str, str, str]:
    """Return ``(key, prefix, digest)``; only the digest and prefix are stored, the key is shown once."""
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, api_key_digest(key)


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_api_key(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, sep, secret = key[len(API_KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 8 or not secret or len(key) > 200:
        return None
    return prefix


def api_key_matches(key: str, digest: str) -> bool:
    return hmac.compare_digest(api_key_digest(key), digest)
