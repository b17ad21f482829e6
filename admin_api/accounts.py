"""Users and API keys: validated CRUD over an open ``Session`` (blocking; the API runs these in worker
threads, the CLI calls them directly inside ``session_scope``).

Invariants kept here, not in the callers: usernames are unique slugs, roles are one of
``models.users.ROLES``, the last active admin can be neither deleted, demoted nor deactivated (nobody could
administer Eva any more), and any change that should end existing sessions bumps ``User.token_version`` and
revokes refresh tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from admin_api.passwords import DEFAULT_ROUNDS, hash_password, new_api_key
from models import ApiKey, RefreshToken, User, utcnow
from models.users import ROLES
from voicebot.errors import Conflict, InvalidInput, NotFound

_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,79}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_username(username: str) -> str:
    if not _USERNAME_RE.match(username):
        raise InvalidInput(
            "username must be 3-80 letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
            field="username",
        )
    return username


def check_password(password: str, *, field: str = "password") -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters", field=field)
    if password.strip() == "":
        raise InvalidInput("password must not be blank", field=field)
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    return role


# ------------------------------ users -------------------------------------------------------------
def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.username))).all())


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist", field="user_id")
    return user


def get_user_by_name(session: Session, username: str) -> User:
    user = session.exec(select(User).where(User.username == username)).first()
    if user is None:
        raise NotFound(f"user {username!r} does not exist", field="username")
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def create_user(
    session: Session, username: str, password: str, role: str = "viewer", *, rounds: int = DEFAULT_ROUNDS
) -> User:
    check_username(username)
    check_password(password)
    check_role(role)
    if find_user(session, username) is not None:
        raise Conflict(f"a user named {username!r} already exists", field="username")
    user = User(username=username, password_hash=hash_password(password, rounds=rounds), role=role)
    session.add(user)
    session.flush()
    return user


def _active_admins(session: Session) -> int:
    return int(
        session.exec(
            select(func.count()).select_from(User).where(User.role == "admin", col(User.active).is_(True))
        ).one()
    )


def _guard_last_admin(
    session: Session,
    user: User,
    *,
    role: str | None = None,
    active: bool | None = None,
    deleting: bool = False,
) -> None:
    loses_admin = deleting or (role is not None and role != "admin") or active is False
    if user.role == "admin" and user.active and loses_admin and _active_admins(session) <= 1:
        raise Conflict("this is the last active admin; create another admin first", field="role")


def revoke_sessions(session: Session, user: User) -> None:
    """End every session of ``user``: access tokens stop at once, refresh tokens are revoked."""
    user.token_version += 1
    user.updated_at = utcnow()
    session.add(user)
    session.exec(update(RefreshToken).where(col(RefreshToken.user_id) == user.id).values(revoked=True))


def update_user(
    session: Session,
    user_id: int,
    *,
    role: str | None = None,
    active: bool | None = None,
    password: str | None = None,
    rounds: int = DEFAULT_ROUNDS,
) -> User:
    user = get_user(session, user_id)
    if role is not None:
        check_role(role)
    if password is not None:
        check_password(password)
    _guard_last_admin(session, user, role=role, active=active)
    ends_sessions = False
    if role is not None and role != user.role:
        user.role = role
        ends_sessions = True
    if active is not None and active != user.active:
        user.active = active
        ends_sessions = True
    if password is not None:
        user.password_hash = hash_password(password, rounds=rounds)
        ends_sessions = True
    user.updated_at = utcnow()
    session.add(user)
    if ends_sessions:
        revoke_sessions(session, user)
    session.flush()
    return user


def delete_user(session: Session, user_id: int) -> None:
    user = get_user(session, user_id)
    _guard_last_admin(session, user, deleting=True)
    session.exec(delete(RefreshToken).where(col(RefreshToken.user_id) == user_id))
    session.delete(user)
    session.flush()


# ------------------------------ API keys ----------------------------------------------------------
def list_api_keys(session: Session, *, include_revoked: bool = True) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(col(ApiKey.id))
    if not include_revoked:
        query = query.where(col(ApiKey.revoked).is_(False))
    return session.exec(query).all()


def get_api_key(session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} does not exist", field="key_id")
    return key


def create_api_key(session: Session, name: str, role: str = "viewer") -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key (never stored, cannot be shown again)."""
    name = name.strip()
    if not 1 <= len(name) <= 120:
        raise InvalidInput("name must be 1-120 characters", field="name")
    check_role(role)
    key, prefix, digest = new_api_key()
    row = ApiKey(name=name, prefix=prefix, key_hash=digest, role=role)
    session.add(row)
    session.flush()
    return row, key


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    key = get_api_key(session, key_id)
    key.revoked = True
    session.add(key)
    session.flush()
    return key
