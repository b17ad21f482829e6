"""Authentication and authorisation: JWT access tokens, rotating refresh tokens, API keys, login rate limits.

* Access tokens are short-lived HS256 JWTs (``settings.jwt_secret``).  Every request re-reads the user, so a
  deactivated user, a changed password or a changed role (all bump ``User.token_version``) ends access at
  once.
* Refresh tokens are JWTs backed by a ``refresh_tokens`` row.  Each refresh spends the token and issues a new
  one in the same *family*; presenting a spent token again means it was copied, so the whole family is
  revoked (OAuth 2.0 Security BCP, "refresh token rotation").
* API keys (``eva_...``) for machines, via ``X-API-Key`` or ``Authorization: Bearer``.
* Login is rate limited per client IP and per username (failed attempts in a sliding window) → 429.

Roles are ordered: ``viewer`` < ``designer`` < ``admin``; an endpoint names the least role it needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from aiohttp import web
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from admin_api.passwords import api_key_matches, burn_password_check, parse_api_key, verify_password
from models import ApiKey, RefreshToken, User, utcnow
from models.db import session_scope
from voicebot.config import Settings
from voicebot.errors import AuthError, ConfigError, Forbidden, RateLimited, TokenReused

log = logging.getLogger(__name__)

Role = Literal["viewer", "designer", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "designer": 1, "admin": 2}
ISSUER = "eva"
ALGORITHM = "HS256"
API_KEY_TOUCH_INTERVAL = 60.0
"""Seconds between ``last_used_at`` writes for one key (a write per request would serialise SQLite)."""


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


class LoginLimiter:
    """Sliding-window counters of failed logins per client IP and per username.

    In memory: one API process serves the admin API (the voice workers scale out, the admin API need not).
    Both maps are bounded, so a flood of distinct usernames cannot grow memory without limit.
    """

    def __init__(
        self,
        *,
        per_user: int = 5,
        per_ip: int = 20,
        window_s: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._users: OrderedDict[str, deque[float]] = OrderedDict()
        self._ips: OrderedDict[str, deque[float]] = OrderedDict()

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

    def check(self, ip: str, username: str) -> None:
        """Raise RateLimited when either counter is exhausted (checked before the password is looked at)."""
        now = self.clock()
        for table, key, limit, what in (
            (self._ips, ip, self.per_ip, "from this address"),
            (self._users, username.lower()[:80], self.per_user, "for this user"),
        ):
            hits = self._recent(table, key)
            if len(hits) >= limit:
                retry = max(1.0, hits[0] + self.window_s - now)
                raise RateLimited(
                    f"too many failed logins {what}; retry in {math.ceil(retry)} s",
                    retry_after=retry,
                    field="username" if table is self._users else None,
                )

    def failure(self, ip: str, username: str) -> None:
        now = self.clock()
        for table, key in ((self._ips, ip), (self._users, username.lower()[:80])):
            hits = self._recent(table, key)
            hits.append(now)
            table[key] = hits
            table.move_to_end(key)
            while len(table) > self.max_keys:
                table.popitem(last=False)

    def success(self, username: str) -> None:
        self._users.pop(username.lower()[:80], None)


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
        self._secret = settings.jwt_secret
        self.access_ttl = max(1, settings.access_token_minutes) * 60
        self.refresh_ttl = max(1, settings.refresh_token_days) * 86400
        self._denied: dict[str, float] = {}
        """Access-token ids logged out before they expire (jti → exp)."""
        self._key_touched: dict[int, float] = {}

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
    async def login(self, ip: str, username: str, password: str) -> tuple[TokenPair, User]:
        self.limiter.check(ip, username)

        def check() -> User | None:
            with session_scope(self.engine) as session:
                user = session.exec(select(User).where(User.username == username)).first()
            if user is None or not user.active:
                burn_password_check(password)
                return None
            return user if verify_password(password, user.password_hash) else None

        user = await asyncio.to_thread(check)
        if user is None:
            self.limiter.failure(ip, username)
            log.info("failed login from %s", ip)
            raise AuthError("invalid username or password", code="invalid_credentials")
        self.limiter.success(username)

        def issue() -> TokenPair:
            with session_scope(self.engine) as session:
                return self._issue_pair(session, user)

        pair = await asyncio.to_thread(issue)
        log.info("user %d logged in", user.id)
        return pair, user

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
            self._deny(principal.token_id, principal.token_expires_at)
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
        now = time.time()
        for old in [k for k, exp in self._denied.items() if exp < now]:
            del self._denied[old]
        self._denied[jti] = expires_at

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
        raise AuthError("authentication required", code="unauthorized")

    async def _from_access_token(self, token: str) -> Principal:
        claims = self._decode(token, "access")
        if claims["jti"] in self._denied:
            raise AuthError("this access token was logged out", code="token_revoked")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError) as exc:
            raise AuthError("the access token is not valid", code="token_invalid") from exc

        def load() -> User | None:
            with session_scope(self.engine) as session:
                return session.get(User, user_id)

        user = await asyncio.to_thread(load)
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
