"""Password hashing (bcrypt) on its own bounded worker pool, and machine API keys.

bcrypt only reads 72 bytes and rejects NUL bytes, so the password is pre-hashed.  The pre-hash is
HMAC-SHA256 keyed with the hash's own bcrypt salt (the construction of passlib's ``bcrypt_sha256`` v2), then
base64'd.  Older Eva hashes used an *unsalted* SHA-256 pre-hash, which lets anyone holding a leaked corpus of
SHA-256 password digests test them against our bcrypt hashes without knowing the passwords ("password
shucking"); keying the pre-hash with the per-hash salt makes every hash's bcrypt input unique.  Old hashes
(``$2b$...`` with no scheme marker) still verify and :func:`needs_rehash` says to upgrade them at the next
successful login.

bcrypt costs ~0.25 s of CPU at 12 rounds: it never runs on the default executor, which call setup, turn
persistence and every database operation share.  :class:`PasswordWorker` gives it a small pool of its own with
a bounded queue; beyond the queue a request is refused at once (429 ``login_busy``), never queued for ever.

API keys look like ``eva_<prefix>_<secret>``: the prefix (8 hex chars) is stored in clear to find the row,
the whole key only as a SHA-256 digest.  Keys carry 256 bits of randomness, so a fast hash is safe for them
(a slow KDF is for guessable secrets such as passwords).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt

from voicebot.errors import RateLimited

T = TypeVar("T")

DEFAULT_ROUNDS = 12
API_KEY_PREFIX = "eva_"
SCHEME = "$eva-hs256$"
"""Marks a hash whose pre-hash is HMAC-SHA256 keyed with its bcrypt salt (hashes without it are legacy)."""


def _legacy_prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def _salted_prehash(password: str, salt: bytes) -> bytes:
    return base64.b64encode(hmac.new(salt, password.encode("utf-8"), hashlib.sha256).digest())


def _salt_of(bcrypt_hash: bytes) -> bytes:
    """The 22-character salt of ``$2b$<cost>$<salt><digest>``."""
    parts = bcrypt_hash.split(b"$")
    if len(parts) != 4 or len(parts[3]) < 22:
        raise ValueError("not a bcrypt hash")
    return parts[3][:22]


def hash_password(password: str, *, rounds: int = DEFAULT_ROUNDS) -> str:
    """A bcrypt hash (slow on purpose: ~0.25 s at 12 rounds; run it on :class:`PasswordWorker`)."""
    config = bcrypt.gensalt(rounds)  # b"$2b$<cost>$" + 22 salt characters (canonical: hashpw keeps them)
    salt = config.rsplit(b"$", 1)[1]
    return SCHEME + bcrypt.hashpw(_salted_prehash(password, salt), config).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    try:
        if password_hash.startswith(SCHEME):
            stored = password_hash[len(SCHEME) :].encode("ascii")
            return bcrypt.checkpw(_salted_prehash(password, _salt_of(stored)), stored)
        return bcrypt.checkpw(_legacy_prehash(password), password_hash.encode("ascii"))
    except (ValueError, UnicodeEncodeError):  # a corrupt or foreign hash: a mismatch, never a crash
        return False


def needs_rehash(password_hash: str) -> bool:
    """True for hashes of the old unsalted-pre-hash scheme (upgrade them after a successful login)."""
    return not password_hash.startswith(SCHEME)


def rehash_password(password: str, old_hash: str) -> str:
    """A current-scheme hash of a password just verified against ``old_hash``, at the old hash's cost."""
    try:
        rounds = int(old_hash.split("$")[2])
    except (IndexError, ValueError):
        rounds = DEFAULT_ROUNDS
    return hash_password(password, rounds=min(max(rounds, 4), 31))


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


class PasswordWorker:
    """bcrypt's own pool: ``threads`` workers and at most ``queue`` jobs waiting; more are refused at once.

    The bound is on jobs *running or waiting in the pool*, released when the thread finishes (not when the
    awaiting request gives up), so cancelled requests cannot let more work pile up than the bound says.  With
    1 thread and a queue of 8 a request waits at most ~9 bcrypt times (about 2 s at 12 rounds) or gets 429.
    """

    def __init__(self, *, threads: int = 1, queue: int = 8) -> None:
        self.capacity = max(1, threads) + max(0, queue)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="eva-bcrypt")
        self._lock = threading.Lock()
        self._busy = 0
        self.jobs_run = 0
        """Jobs that reached the pool (tests and the admin read it to see what an attack cost)."""

    def _release(self, _future: Future[Any]) -> None:
        with self._lock:
            self._busy -= 1

    async def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._busy >= self.capacity:
                raise RateLimited("the server is busy checking passwords; retry in a moment",
                                  retry_after=1.0, code="login_busy")
            self._busy += 1
            self.jobs_run += 1
        future = self._pool.submit(fn)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
