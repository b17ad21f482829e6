"""Users and API keys: validated CRUD over an open ``Session`` (blocking; the API runs these in worker
threads, the CLI calls them directly inside ``session_scope``).

Invariants kept here, not in the callers: usernames are unique slugs, roles are one of
``models.users.ROLES``, the last active admin can be neither deleted, demoted nor deactivated (nobody could
administer Eva any more; the check holds under concurrent requests, see :func:`_guard_last_admin`), and any
change that should end existing sessions bumps ``User.token_version`` and revokes refresh tokens.  Deleting a
user revokes the API keys they made.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from admin_api.passwords import DEFAULT_ROUNDS, hash_password, new_api_key
from models import ApiKey, RefreshToken, User, utcnow
from models.users import KEY_ONLY_ROLES, ROLE_RANK, ROLES, rank_to_hold
from voicebot.errors import Conflict, InvalidInput, NotFound

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{2,79}")
"""Used with ``fullmatch``: ``match`` with ``$`` would accept a trailing newline (``"admin\\n"``)."""
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_username(username: str) -> str:
    if not _USERNAME_RE.fullmatch(username):
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
    session: Session,
    username: str,
    password: str | None,
    role: str = "viewer",
    *,
    rounds: int = DEFAULT_ROUNDS,
    password_hash: str | None = None,
) -> User:
    """``password_hash`` (already hashed on the bcrypt pool by the API) instead of ``password`` keeps bcrypt
    out of the database thread."""
    check_username(username)
    if password_hash is None:
        if password is None:
            raise InvalidInput("a password is required", field="password")
        check_password(password)
    check_role(role)
    if find_user(session, username) is not None:
        raise Conflict(f"a user named {username!r} already exists", field="username")
    if password_hash is None:
        assert password is not None
        password_hash = hash_password(password, rounds=rounds)
    user = User(username=username, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def active_admins(session: Session) -> int:
    """Active admin accounts (none: a fresh install, whose first admin the console's setup page may create)."""
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
    """Refuse a change that would leave no active admin.

    Check-then-act is not enough: two requests demoting the last two admins would each count two admins and
    both succeed.  So before counting, a no-op UPDATE of every active admin row takes the write lock: on
    SQLite the whole database's (the second writer waits, then reads the first one's commit), on PostgreSQL
    those rows' locks (the second waits, then re-reads the rows and no longer sees the demoted admin).  The
    user is re-read after the lock, so the decision uses the committed state.
    """
    loses_admin = deleting or (role is not None and role != "admin") or active is False
    if not (loses_admin and user.role == "admin" and user.active):
        return
    session.exec(
        update(User).where(col(User.role) == "admin", col(User.active).is_(True)).values(role=col(User.role))
    )
    session.refresh(user)
    if user.role == "admin" and user.active and active_admins(session) <= 1:
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
    password_hash: str | None = None,
) -> User:
    """``password_hash``: a new password already hashed on the bcrypt pool (instead of ``password``)."""
    user = get_user(session, user_id)
    if role is not None:
        check_role(role)
    if password is not None:
        check_password(password)
        password_hash = hash_password(password, rounds=rounds)
    _guard_last_admin(session, user, role=role, active=active)
    ends_sessions = False
    if role is not None and role != user.role:
        user.role = role
        ends_sessions = True
    if active is not None and active != user.active:
        user.active = active
        ends_sessions = True
    if password_hash is not None:
        user.password_hash = password_hash
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
    # The keys they made die with them (and keep no dangling owner).
    session.exec(update(ApiKey).where(col(ApiKey.owner_id) == user_id).values(revoked=True, owner_id=None))
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


def create_api_key(
    session: Session,
    name: str,
    role: str = "viewer",
    *,
    owner_id: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key (never stored, cannot be shown again).

    ``owner_id``: the user making it through the API; the key then works only while that user is active and
    holds at least the key's role (None: an operator's key made on the host).  ``expires_at``: optional end.
    """
    name = name.strip()
    if not 1 <= len(name) <= 120:
        raise InvalidInput("name must be 1-120 characters", field="name")
    if role not in KEY_ONLY_ROLES:
        check_role(role)
    if role == "pending":
        raise InvalidInput("an API key needs a role that can do something", field="role")
    if owner_id is not None:
        owner = get_user(session, owner_id)
        if ROLE_RANK.get(owner.role, -1) < rank_to_hold(role):
            raise InvalidInput(f"you cannot make a key with more rights than your own ({owner.role})", field="role")
    key, prefix, digest = new_api_key()
    row = ApiKey(name=name, prefix=prefix, key_hash=digest, role=role, owner_id=owner_id, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, key


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    key = get_api_key(session, key_id)
    key.revoked = True
    session.add(key)
    session.flush()
    return key
