"""Admin users, machine API keys, refresh tokens (rotation with reuse detection) and logged-out access tokens."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow

ROLES = ("admin", "designer", "viewer", "pending")
"""``pending``: an account made by open signup; it may sign in but reads nothing until an admin grants a role."""
ROLE_RANK: dict[str, int] = {"pending": -1, "viewer": 0, "designer": 1, "admin": 2}
"""Roles are ordered; an endpoint (or an API key) names the least one it needs."""
KEY_ONLY_ROLES: dict[str, str] = {"chat": "designer"}
"""Roles outside the order, for API keys only, each with the least user role that may make and keep such a key.
``chat``: a website backend's key; it opens chat sessions and streams replies in the sessions it opened, and can do
nothing else (it reads no conversation, names no contact, changes no agent), so a leaked widget key costs model
time, not the data of anyone who is not the leaking site's own visitor."""


def rank_to_hold(role: str) -> int:
    """The rank a key's owner needs to make and keep a key of ``role``."""
    return ROLE_RANK[KEY_ONLY_ROLES.get(role, role)]


class User(SQLModel, table=True):
    __tablename__ = "users"
    # Never hand a deleted user's id to a new user (SQLite reuses the last rowid otherwise): access tokens name
    # the user by id.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=80)
    password_hash: str = Field(max_length=200)
    role: str = Field(default="viewer", max_length=16)
    active: bool = True
    token_version: int = Field(default_factory=lambda: secrets.randbelow(2**31))
    """Bumped on password change, role change, deactivation and "log out everywhere": access tokens carry the
    version they were issued under and stop working as soon as it moves."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class KnownLoginAddress(SQLModel, table=True):
    """An address (IPv6: its /64) a user signed in from successfully: exempt from the per-user login ceiling.

    Stored, not only kept in memory, so neither a restart nor a flood of junk usernames drops the exemption that
    lets the real admin in while a distributed guesser has spent the user's ceiling (see ``LoginLimiter``).
    ``user_key`` is the limiter's key: the lower-cased username, or ``#<id>`` for password changes.
    """

    __tablename__ = "known_login_addresses"
    __table_args__ = (UniqueConstraint("user_key", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    user_key: str = Field(index=True, max_length=81)
    address: str = Field(max_length=64)
    last_success_at: datetime = Field(default_factory=utcnow, index=True)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=120)
    prefix: str = Field(index=True, unique=True, max_length=16)
    key_hash: str = Field(max_length=128)
    role: str = Field(default="viewer", max_length=16)
    owner_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    """The user who made the key through the API: it works only while that user is active and still holds
    the key's role.  None for keys made on the host with ``eva apikey create`` (the operator's)."""
    expires_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked: bool = False


class RefreshToken(SQLModel, table=True):
    __tablename__ = "refresh_tokens"

    id: int | None = Field(default=None, primary_key=True)
    jti: str = Field(index=True, unique=True, max_length=64)
    family: str = Field(index=True, max_length=64)
    """All tokens rotated from one login share a family; reuse of a spent token revokes the family."""
    user_id: int = Field(foreign_key="users.id", index=True)
    expires_at: datetime
    used_at: datetime | None = None
    revoked: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class RevokedAccessToken(SQLModel, table=True):
    """Access tokens logged out before they expire.  In the database, not in memory, so a restart (or
    another API process) does not bring a logged-out token back; rows are purged once the token expires."""

    __tablename__ = "revoked_access_tokens"

    jti: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(index=True)
