"""Authentication and authorisation: JWT access tokens, rotating refresh tokens, API keys, login rate limits.

* Access tokens are short-lived HS256 JWTs (``settings.jwt_secret``).  Every request re-reads the user, so a
  deactivated user, a changed password or a changed role (all bump ``User.token_version``) ends access at
  once.
* Refresh tokens are JWTs backed by a ``refresh_tokens`` row.  Each refresh spends the token and issues a new
  one in the same *family*; presenting a spent token again means it was copied, so the whole family is
  revoked (OAuth 2.0 Security BCP, "refresh token rotation").
* API keys (``eva_...``) for machines, via ``X-API-Key`` or ``Authorization: Bearer``.
* Password checks (login, password change) are counted *before* bcrypt runs, per (user, address), per address
  and per user with an exception for addresses the user signed in from (see :class:`LoginLimiter`) → 429;
  bcrypt runs on its own bounded pool (:class:`admin_api.passwords.PasswordWorker`), never on the default
  executor that call setup uses.  The client address honours X-Forwarded-For only from configured proxies
  (entries may carry a port: ``1.2.3.4:5678``, ``[2001:db8::1]:5678``); an IPv6 client is counted by its /64.
* Logged-out access tokens are denied through the database (they stay dead across restarts); expired
  refresh-token and deny-list rows are purged.
* An API key made through the API belongs to its creator: it stops working when the creator is deactivated,
  deleted or loses the key's role; keys may expire.

Roles are ordered: ``viewer`` < ``designer`` < ``admin``; an endpoint names the least role it needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, Literal, TypeVar

import jwt
from aiohttp import web
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from admin_api.console import session as session_cookies
from admin_api.passwords import (
    PasswordWorker,
    api_key_matches,
    burn_password_check,
    hash_password,
    needs_rehash,
    parse_api_key,
    rehash_password,
    verify_password,
)
from models import ApiKey, KnownLoginAddress, RefreshToken, RevokedAccessToken, User, as_utc, utcnow
from models.db import session_scope
from models.users import KEY_ONLY_ROLES, ROLE_RANK, rank_to_hold
from voicebot.config import Settings
from voicebot.errors import AuthError, ConfigError, Forbidden, RateLimited, TokenReused

log = logging.getLogger(__name__)
T = TypeVar("T")

Role = Literal["viewer", "designer", "admin"]
# ROLE_RANK: ``pending`` (open signup) is below every role an endpoint names: such a user may only sign in.
ISSUER = "eva"
ALGORITHM = "HS256"
API_KEY_TOUCH_INTERVAL = 60.0
"""Seconds between ``last_used_at`` writes for one key (a write per request would serialise SQLite)."""
PURGE_INTERVAL = 600.0
"""Seconds between purges of expired refresh-token and deny-list rows (done by a login, at most this often)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (JWT) or a machine (API key)."""

    kind: Literal["user", "api_key"]
    id: int
    name: str
    role: str
    token_id: str = ""
    token_expires_at: float = 0.0

    def has_role(self, role: str) -> bool:
        if self.role in KEY_ONLY_ROLES:  # a scoped key reaches only the endpoints of its own role
            return role == self.role
        if role in KEY_ONLY_ROLES:  # and every user or key at least as strong as the scope's owner may too
            return ROLE_RANK.get(self.role, -1) >= rank_to_hold(role)
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]


def require_role(principal: Principal, role: str) -> None:
    if not principal.has_role(role):
        raise Forbidden(f"this needs the {role} role (you are {principal.role})", field="role")


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


KNOWN_PER_USER = 16
"""Addresses remembered per user as "signed in from here before" (the most recent ones; older ones are forgotten)."""
IPV6_CLIENT_PREFIX = 64
"""An IPv6 client is counted by its /64: one host (one customer line) is routinely given a whole /64, so a per-
address budget keyed by the full address would be no budget at all."""


def limit_key(address: str) -> str:
    """The key a client address is counted under: IPv4 as is, IPv6 as its /64, anything else as given (bounded)."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return address[:64]
    if parsed.version == 6:
        mapped = getattr(parsed, "ipv4_mapped", None)
        if mapped is not None:
            return str(mapped)
        return str(ip_network(f"{parsed}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(parsed)


class LoginLimiter:
    """Counts password checks (logins and password changes) and refuses them before bcrypt runs.

    Every attempt is *reserved* (counted) synchronously on the event loop before any hashing starts, so N
    concurrent requests cannot all slip past the check while the first ones are still hashing.  Three budgets
    over a sliding window, all spent by the reservation:

    * per (username, client address) pair (``per_pair``, 5): a guesser from one address gets 5 tries;
    * per client address (``per_ip``, 20): one address cannot spray many usernames;
    * per username across all addresses (``per_user``, 50): a ceiling against distributed guessing.

    An IPv6 client is counted by its /64 (:func:`limit_key`): otherwise every one of the 2**64 addresses a
    single host may use would have its own budget.

    Why not a plain per-username lockout: anyone could then keep a named admin locked out for ever by
    sending 5 wrong passwords every window.  Here the attacker's own pair and address budgets run out
    first, and the real admin on another address is unaffected.  Only an attacker with many addresses can
    reach the per-user ceiling, and even then it does not apply to an address this user signed in from
    successfully within ``known_s`` (30 days): the admin's usual workstation or office still gets in.  A
    success clears its pair budget and is not counted against the address or the user.  The known addresses
    are stored (``known_login_addresses``, loaded by :class:`AuthService`), so a restart does not drop them,
    and they are kept per user (``KNOWN_PER_USER``), so no flood of other names can push them out.

    Every table is bounded (``max_keys``) without ever dropping a key that has hits inside the window: dropping
    one would reset its budget, and an attacker flooding junk usernames could then evict ``admin`` and start
    its per-user ceiling afresh.  When a table is full of live keys, an attempt that needs a *new* key is
    refused (429 ``login_crowded``) until keys expire, at most ``window_s`` later.  The choice this makes for a
    flood: an attacker with enough addresses to fill a table (``max_keys / per_ip`` addresses, IPv6: /64s)
    can keep *new* usernames and *new* addresses from being tried for as long as the flood lasts, but cannot
    reset any budget, so guessing gets no easier; keys already counted keep working, and an address the user
    signed in from before is always let in (its keys may exceed the bound: those are bounded by successful
    logins, which the attacker cannot make).  Refusing is the safe side; growing without bound is not an
    option and evicting live keys is the bug this replaced.

    In memory: one API process serves the admin API (the voice workers scale out, the admin API need not).
    """

    def __init__(
        self,
        *,
        per_pair: int = 5,
        per_ip: int = 20,
        per_user: int = 50,
        window_s: float = 300.0,
        known_s: float = 30 * 86400.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.per_pair = per_pair
        self.per_ip = per_ip
        self.per_user = per_user
        self.window_s = window_s
        self.known_s = known_s
        self.max_keys = max_keys
        self.clock = clock
        self.wall = wall
        self._pairs: OrderedDict[str, deque[float]] = OrderedDict()
        self._ips: OrderedDict[str, deque[float]] = OrderedDict()
        self._users: OrderedDict[str, deque[float]] = OrderedDict()
        self._known: dict[str, OrderedDict[str, float]] = {}
        """user key → {address key → when (wall clock, epoch s) that user last signed in from it}, oldest first."""

    @staticmethod
    def _keys(ip: str, username: str) -> tuple[str, str, str]:
        user = username.lower()[:80]
        address = limit_key(ip)
        return f"{user}\x00{address}", address, user

    def _recent(self, table: OrderedDict[str, deque[float]], key: str) -> deque[float]:
        now = self.clock()
        hits = table.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del table[key]
        return hits

    def _has_room(self, table: OrderedDict[str, deque[float]], key: str) -> bool:
        """Whether ``key`` can be counted in ``table``: it is there already, or there is room once expired keys go."""
        if key in table or len(table) < self.max_keys:
            return True
        horizon = self.clock() - self.window_s
        # The table is in order of last use, so expired keys are at the front: drop those, never a live one.
        while table:
            oldest, hits = next(iter(table.items()))
            if hits and hits[-1] > horizon:
                break
            del table[oldest]
        return len(table) < self.max_keys

    def _record(self, table: OrderedDict[str, deque[float]], key: str, stamp: float) -> None:
        hits = self._recent(table, key)
        hits.append(stamp)
        table[key] = hits
        table.move_to_end(key)

    def _refuse(self, hits: deque[float], what: str, field: str | None) -> RateLimited:
        retry = max(1.0, hits[0] + self.window_s - self.clock())
        return RateLimited(
            f"too many password attempts {what}; retry in {math.ceil(retry)} s", retry_after=retry, field=field
        )

    def known(self, ip: str, username: str) -> bool:
        _pair, address, user = self._keys(ip, username)
        addresses = self._known.get(user)
        seen = addresses.get(address) if addresses is not None else None
        return seen is not None and self.wall() - seen < self.known_s

    def remember(self, user: str, address: str, when: float) -> None:
        """Mark ``address`` (a :func:`limit_key`) as one ``user`` (a limiter user key) signed in from at ``when``."""
        addresses = self._known.setdefault(user[:81], OrderedDict())
        if addresses.get(address, -math.inf) > when:
            return
        addresses[address] = when
        addresses.move_to_end(address)
        while len(addresses) > KNOWN_PER_USER:
            addresses.popitem(last=False)

    def reserve(self, ip: str, username: str) -> Attempt:
        """Count one attempt now, or raise RateLimited (before the password is looked at)."""
        pair, ip_key, user = self._keys(ip, username)
        hits = self._recent(self._pairs, pair)
        if len(hits) >= self.per_pair:
            raise self._refuse(hits, "for this user from this address", "username")
        hits = self._recent(self._ips, ip_key)
        if len(hits) >= self.per_ip:
            raise self._refuse(hits, "from this address", None)
        known = self.known(ip, username)
        hits = self._recent(self._users, user)
        if len(hits) >= self.per_user and not known:
            raise self._refuse(hits, "for this user", "username")
        tables = ((self._pairs, pair), (self._ips, ip_key), (self._users, user))
        if not known and not all(self._has_room(table, key) for table, key in tables):
            raise RateLimited("too many password attempts from everywhere right now; retry in a few minutes",
                              retry_after=self.window_s, code="login_crowded")
        stamp = self.clock()
        for table, key in tables:
            self._record(table, key, stamp)
        return Attempt(self, pair, ip_key, user, stamp)

    def _forget(self, pair: str, ip_key: str, user: str, stamp: float, *, clear_pair: bool) -> None:
        for table, key in ((self._ips, ip_key), (self._users, user), (self._pairs, pair)):
            hits = table.get(key)
            if hits is None:
                continue
            if clear_pair and table is self._pairs:
                hits.clear()
            elif stamp in hits:
                hits.remove(stamp)
            if not hits:
                del table[key]

    def _succeeded(self, pair: str, ip_key: str, user: str, stamp: float) -> None:
        self._forget(pair, ip_key, user, stamp, clear_pair=True)
        self.remember(user, ip_key, self.wall())


@dataclass
class Attempt:
    """One reserved password check; say how it ended (a failure simply stays counted)."""

    limiter: LoginLimiter
    pair: str
    ip: str
    user: str
    stamp: float

    def failed(self) -> None:
        """The password was wrong: the reservation stays counted until it leaves the window."""

    def succeeded(self) -> None:
        self.limiter._succeeded(self.pair, self.ip, self.user, self.stamp)

    def cancelled(self) -> None:
        """No password was checked (the hashing pool was full): give the budget back."""
        self.limiter._forget(self.pair, self.ip, self.user, self.stamp, clear_pair=False)


def parse_networks(spec: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """``"10.0.0.1, 192.168.0.0/24"`` → networks; a bad entry is a ConfigError naming it."""
    networks = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"api_trusted_proxies: {item!r} is not an address or network",
                              field="api_trusted_proxies") from exc
    return tuple(networks)


MAX_FORWARDED_HOPS = 16
"""X-Forwarded-For entries looked at (from the right); a longer header is the client's own invention."""


def client_address(
    remote: str | None, forwarded_for: list[str], trusted: tuple[IPv4Network | IPv6Network, ...]
) -> str:
    """The client's address: the socket peer, unless that peer is a trusted proxy.

    Then X-Forwarded-For is read from the right (each proxy appends the address it got the request from), and
    the first address that is not itself a trusted proxy is the client.  Everything left of it was written by
    the client and is never believed.  With no trusted proxies configured the header is ignored.
    """
    peer = remote or "unknown"

    def is_trusted(address: str) -> bool:
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    client = peer
    for hop in reversed(hops):
        address = forwarded_hop(hop)
        if address is None:
            return client  # garbage from a hop we trust less than the one that handed it on
        client = address
        if not is_trusted(address):
            return address
    return client


def forwarded_hop(hop: str) -> str | None:
    """One X-Forwarded-For entry → its address: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``
    or ``[2001:db8::1]:5678`` (some proxies append the port); None when it is none of these."""
    text = hop.strip()
    if len(text) > 64:
        return None
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        port = rest[1:]
        if not bracket or (rest and not (rest.startswith(":") and port.isascii() and port.isdigit()
                                         and len(port) <= 5)):
            return None
        text = inner
    elif text.count(":") == 1:
        text, _colon, port = text.partition(":")
        if not (port.isascii() and port.isdigit() and len(port) <= 5):
            return None
    try:
        parsed = ip_address(text)
    except ValueError:
        return None
    if parsed.version == 6 and getattr(parsed, "scope_id", None):
        return None  # a zone index ("%eth0") names a link on the proxy, not the client
    return str(parsed)


class _Reused(Exception):
    def __init__(self, family: str, user_id: int) -> None:
        super().__init__(family)
        self.family = family
        self.user_id = user_id


class AuthService:
    """Issues and checks credentials.  Blocking work (bcrypt, database) runs in worker threads."""

    def __init__(self, settings: Settings, engine: Engine, *, limiter: LoginLimiter | None = None) -> None:
        if len(settings.jwt_secret.encode("utf-8")) < 32:
            raise ConfigError(
                "jwt_secret is missing or shorter than 32 bytes: run `eva setup`", field="jwt_secret"
            )
        self.settings = settings
        self.engine = engine
        self.limiter = limiter or LoginLimiter()
        self.trusted_proxies = parse_networks(settings.api_trusted_proxies)
        self.hasher = PasswordWorker(threads=settings.password_hash_threads, queue=settings.password_hash_queue)
        weakref.finalize(self, self.hasher.close)
        self._secret = settings.jwt_secret
        self.access_ttl = max(1, settings.access_token_minutes) * 60
        self.refresh_ttl = max(1, settings.refresh_token_days) * 86400
        self._key_touched: dict[int, float] = {}
        self._purged_at = -math.inf
        self._known_loaded = False
        self._known_lock = asyncio.Lock()

    async def _load_known(self) -> None:
        """Once per process: hand the stored known addresses to the limiter (before its first reservation)."""
        if self._known_loaded:
            return
        async with self._known_lock:
            if self._known_loaded:
                return
            since = utcnow() - timedelta(seconds=self.limiter.known_s)

            def load() -> list[tuple[str, str, datetime]]:
                with session_scope(self.engine) as session:
                    rows = session.exec(select(KnownLoginAddress)
                                        .where(col(KnownLoginAddress.last_success_at) >= since)
                                        .order_by(col(KnownLoginAddress.last_success_at))).all()
                    return [(row.user_key, row.address, row.last_success_at) for row in rows]

            for user, address, when in await asyncio.to_thread(load):
                self.limiter.remember(user, address, when.replace(tzinfo=UTC).timestamp())
            self._known_loaded = True

    def _store_known(self, session: Any, attempt: Attempt) -> None:
        """Persist that ``attempt`` succeeded from its address (kept to the ``KNOWN_PER_USER`` most recent)."""
        now = utcnow()
        row = session.exec(select(KnownLoginAddress).where(KnownLoginAddress.user_key == attempt.user,
                                                           KnownLoginAddress.address == attempt.ip)).first()
        if row is None:
            try:
                with session.begin_nested():  # two sign-ins at once from one address: the second finds the row
                    session.add(KnownLoginAddress(user_key=attempt.user, address=attempt.ip, last_success_at=now))
            except IntegrityError:
                pass  # the concurrent sign-in stored it a moment ago: as good as ours
        else:
            row.last_success_at = now
            session.add(row)
            session.flush()
        stale = session.exec(select(KnownLoginAddress.id).where(KnownLoginAddress.user_key == attempt.user)
                             .order_by(col(KnownLoginAddress.last_success_at).desc())
                             .offset(KNOWN_PER_USER)).all()
        if stale:
            session.exec(delete(KnownLoginAddress).where(col(KnownLoginAddress.id).in_(stale)))

    def client_ip(self, request: web.Request) -> str:
        """The caller's address for limits and logs (X-Forwarded-For only from ``api_trusted_proxies``)."""
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted_proxies)

    # ------------------------------------------------------------------ tokens
    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def _decode(self, token: str, kind: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(f"the {kind} token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"the {kind} token is not valid", code="token_invalid") from exc
        if claims.get("typ") != kind:
            raise AuthError(f"this is not a {kind} token", code="token_invalid")
        return claims

    def _issue_pair(self, session: Any, user: User, family: str | None = None) -> TokenPair:
        now = int(time.time())
        assert user.id is not None
        access = self._encode(
            {
                "iss": ISSUER,
                "sub": str(user.id),
                "typ": "access",
                "ver": user.token_version,
                "jti": secrets.token_hex(16),
                "iat": now,
                "exp": now + self.access_ttl,
            }
        )
        jti = secrets.token_hex(16)
        family = family or secrets.token_hex(16)
        refresh = self._encode(
            {
                "iss": ISSUER,
                "sub": str(user.id),
                "typ": "refresh",
                "fam": family,
                "jti": jti,
                "iat": now,
                "exp": now + self.refresh_ttl,
            }
        )
        session.add(
            RefreshToken(
                jti=jti,
                family=family,
                user_id=user.id,
                expires_at=datetime.now(UTC) + timedelta(seconds=self.refresh_ttl),
            )
        )
        return TokenPair(access, refresh, self.access_ttl, self.refresh_ttl)

    # ------------------------------------------------------------------ login / refresh / logout
    async def checked(self, attempt: Attempt, check: Callable[[], T]) -> T:
        """Run a password check on the bcrypt pool for a reserved ``attempt`` (given back if the pool is full)."""
        try:
            return await self.hasher.run(check)
        except RateLimited:
            attempt.cancelled()
            raise

    async def hash_new_password(self, password: str) -> str:
        """Validate and hash a new password on the bcrypt pool (not in a database thread)."""
        from admin_api.accounts import check_password

        check_password(password)
        return await self.hasher.run(lambda: hash_password(password))

    async def login(self, ip: str, username: str, password: str) -> tuple[TokenPair, User]:
        await self._load_known()
        attempt = self.limiter.reserve(ip, username)

        def check() -> tuple[User | None, str | None]:
            # The lookup runs on the bcrypt pool too: a login touches no shared worker until it succeeds.
            with session_scope(self.engine) as session:
                user = session.exec(select(User).where(User.username == username)).first()
            if user is None or not user.active:
                burn_password_check(password)
                return None, None
            if not verify_password(password, user.password_hash):
                return None, None
            upgraded = rehash_password(password, user.password_hash) if needs_rehash(user.password_hash) else None
            return user, upgraded

        user, upgraded = await self.checked(attempt, check)
        if user is None:
            attempt.failed()
            log.info("failed login from %s", ip)
            raise AuthError("invalid username or password", code="invalid_credentials")
        attempt.succeeded()
        purge = time.monotonic() - self._purged_at > PURGE_INTERVAL
        if purge:
            self._purged_at = time.monotonic()

        def issue() -> TokenPair:
            with session_scope(self.engine) as session:
                if upgraded is not None:
                    # Only if the hash is still the one we checked (a concurrent password change wins).
                    session.exec(
                        update(User)
                        .where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
                        .values(password_hash=upgraded)
                    )
                if purge:
                    _purge_expired(session)
                self._store_known(session, attempt)
                return self._issue_pair(session, user)

        pair = await asyncio.to_thread(issue)
        log.info("user %d logged in", user.id)
        return pair, user

    async def change_password(self, principal: Principal, ip: str, current: str, new: str) -> None:
        """Check ``current`` (limited like a login: it is a password oracle too) and set ``new``."""
        from admin_api import accounts

        accounts.check_password(new, field="new_password")
        await self._load_known()
        attempt = self.limiter.reserve(ip, f"#{principal.id}")  # '#' cannot start a username

        def check() -> str | None:
            with session_scope(self.engine) as session:
                user = accounts.get_user(session, principal.id)
            if not verify_password(current, user.password_hash):
                return None
            return hash_password(new)

        new_hash = await self.checked(attempt, check)
        if new_hash is None:
            attempt.failed()
            raise AuthError("the current password is wrong", code="invalid_credentials", field="current_password")
        attempt.succeeded()

        def store() -> None:
            with session_scope(self.engine) as session:
                accounts.update_user(session, principal.id, password_hash=new_hash)
                self._store_known(session, attempt)

        await asyncio.to_thread(store)

    async def refresh(self, token: str) -> tuple[TokenPair, User]:
        claims = self._decode(token, "refresh")

        def rotate() -> tuple[TokenPair, User]:
            with session_scope(self.engine) as session:
                row = session.exec(select(RefreshToken).where(RefreshToken.jti == claims["jti"])).first()
                if row is None:
                    raise AuthError("the refresh token is not valid", code="token_invalid")
                if row.revoked or row.used_at is not None:
                    raise _Reused(row.family, row.user_id)
                # Spend the token with a conditional update, so two concurrent refreshes cannot both win.
                spent = session.exec(
                    update(RefreshToken)
                    .where(
                        col(RefreshToken.id) == row.id,
                        col(RefreshToken.used_at).is_(None),
                        col(RefreshToken.revoked).is_(False),
                    )
                    .values(used_at=utcnow())
                )
                if spent.rowcount != 1:
                    raise _Reused(row.family, row.user_id)
                user = session.get(User, row.user_id)
                if user is None or not user.active:
                    raise AuthError("the account is disabled", code="account_disabled")
                return self._issue_pair(session, user, family=row.family), user

        try:
            return await asyncio.to_thread(rotate)
        except _Reused as reused:
            await asyncio.to_thread(self._revoke_family, reused.family)
            log.warning("refresh token reuse for user %d: token family revoked", reused.user_id)
            raise TokenReused(
                "this refresh token was already used; all sessions from that login are revoked, log in again"
            ) from None

    def _revoke_family(self, family: str) -> None:
        with session_scope(self.engine) as session:
            session.exec(update(RefreshToken).where(col(RefreshToken.family) == family).values(revoked=True))

    async def logout(self, principal: Principal, refresh_token: str | None, *, everywhere: bool) -> None:
        """Revoke the refresh family (or every session of the user) and deny the current access token."""
        if principal.token_id:
            await asyncio.to_thread(self._deny, principal.token_id, principal.token_expires_at)
        if principal.kind != "user":
            return
        family: str | None = None
        if refresh_token:
            claims = self._decode(refresh_token, "refresh")
            if claims["sub"] != str(principal.id):
                raise AuthError(
                    "the refresh token belongs to another user", code="token_invalid", field="refresh_token"
                )
            family = str(claims["fam"])

        def revoke() -> None:
            from admin_api.accounts import revoke_sessions

            with session_scope(self.engine) as session:
                if everywhere:
                    user = session.get(User, principal.id)
                    if user is not None:
                        revoke_sessions(session, user)
                elif family:
                    session.exec(
                        update(RefreshToken).where(col(RefreshToken.family) == family).values(revoked=True)
                    )

        await asyncio.to_thread(revoke)

    def _deny(self, jti: str, expires_at: float) -> None:
        """Blocking: record a logged-out access token until it would have expired anyway."""
        try:
            with session_scope(self.engine) as session:
                session.add(RevokedAccessToken(jti=jti, expires_at=datetime.fromtimestamp(expires_at, UTC)))
        except IntegrityError:
            pass  # a concurrent logout with the same token denied it first: the outcome is the same

    # ------------------------------------------------------------------ per-request authentication
    async def authenticate(self, request: web.Request) -> Principal:
        api_key = request.headers.get("X-API-Key", "").strip()
        header = request.headers.get("Authorization", "").strip()
        if api_key and header:
            # Two credentials are ambiguous (and one may be a stale or forged one): refuse rather than pick.
            raise AuthError("send either an Authorization header or an X-API-Key header, not both",
                            code="ambiguous_credentials")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError(
                    "use 'Authorization: Bearer <token>' or an X-API-Key header", code="unauthorized"
                )
            value = value.strip()
            if value.startswith("eva_"):
                api_key = value
            else:
                return await self._from_access_token(value)
        if api_key:
            return await self._from_api_key(api_key)
        cookie = request.cookies.get(session_cookies.ACCESS_COOKIE, "")
        if cookie:
            # The console's session (admin_api.console.session): a header, when sent, always wins above, so an
            # API client is never authenticated by a cookie its browser happens to hold.
            principal = await self._from_access_token(cookie)
            session_cookies.check_csrf(request, self._secret, principal.token_id)
            return principal
        raise AuthError("authentication required", code="unauthorized")

    def csrf_for(self, access_token: str) -> str:
        """The console's CSRF token for a freshly issued access token."""
        return session_cookies.csrf_token(self._secret, str(self._decode(access_token, "access")["jti"]))

    async def _from_access_token(self, token: str) -> Principal:
        claims = self._decode(token, "access")
        try:
            user_id = int(claims["sub"])
            jti = str(claims["jti"])
        except (TypeError, ValueError) as exc:
            raise AuthError("the access token is not valid", code="token_invalid") from exc

        def load() -> tuple[User | None, bool]:
            with session_scope(self.engine) as session:
                return session.get(User, user_id), session.get(RevokedAccessToken, jti) is not None

        user, denied = await asyncio.to_thread(load)
        if denied:
            raise AuthError("this access token was logged out", code="token_revoked")
        if user is None or not user.active:
            raise AuthError("the account is disabled or deleted", code="account_disabled")
        if claims.get("ver") != user.token_version:
            raise AuthError(
                "this session has ended (password, role or status changed); log in again",
                code="token_revoked",
            )
        return Principal(
            "user",
            user_id,
            user.username,
            user.role,
            token_id=str(claims["jti"]),
            token_expires_at=float(claims["exp"]),
        )

    async def _from_api_key(self, key: str) -> Principal:
        prefix = parse_api_key(key)
        if prefix is None:
            raise AuthError("the API key is not valid", code="api_key_invalid")
        now = time.monotonic()

        def load() -> ApiKey | None:
            with session_scope(self.engine) as session:
                row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
                if row is None or row.revoked or not api_key_matches(key, row.key_hash):
                    return None
                if row.expires_at is not None and as_utc(row.expires_at) <= utcnow():
                    return None
                if row.owner_id is not None:
                    # A key never outranks the user who made it: demoting, deactivating or deleting that
                    # user ends every key of a higher role at once.
                    owner = session.get(User, row.owner_id)
                    if owner is None or not owner.active or ROLE_RANK.get(owner.role, -1) < rank_to_hold(row.role):
                        return None
                assert row.id is not None
                if now - self._key_touched.get(row.id, -math.inf) > API_KEY_TOUCH_INTERVAL:
                    row.last_used_at = utcnow()
                    session.add(row)
                return row

        row = await asyncio.to_thread(load)
        if row is None or row.id is None:
            raise AuthError("the API key is not valid or was revoked", code="api_key_invalid")
        self._key_touched[row.id] = now
        return Principal("api_key", row.id, row.name, row.role)




def _purge_expired(session: Any) -> None:
    """Delete refresh-token and deny-list rows whose tokens have expired (they can never be presented again:
    the JWT's own ``exp`` refuses them first)."""
    now = utcnow()
    session.exec(delete(RefreshToken).where(col(RefreshToken.expires_at) < now))
    session.exec(delete(RevokedAccessToken).where(col(RevokedAccessToken.expires_at) < now))
