"""Login, token refresh and logout, the caller's own identity and password; users and API keys (admins)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session

from admin_api import accounts
from admin_api.framework import ApiRouter, Ctx
from admin_api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    LogoutRequest,
    MeOut,
    PasswordChange,
    RefreshRequest,
    SignupRequest,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from models import ApiKey, User, utcnow
from voicebot.errors import Forbidden

router = ApiRouter("auth")
users = ApiRouter("users")
signup_router = ApiRouter("auth")
"""Mounted only when ``settings.open_signup`` is on."""


def identity(user: User) -> dict[str, Any]:
    """A signed-in user as ``MeOut`` describes them (the token answers and the console's session answer)."""
    return {"kind": "user", "id": user.id, "name": user.username, "role": user.role}


@router.post(
    "/auth/login",
    role=None,
    errors=(401, 429),
    summary="Log in: access + refresh token (429 when this user/address is out of attempts or the server is busy)",
)
async def login(ctx: Ctx, body: LoginRequest) -> TokenOut:
    pair, user = await ctx.services.auth.login(ctx.client_ip, body.username, body.password)
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
        user=MeOut.model_validate(identity(user)),
    )


@router.post(
    "/auth/refresh",
    role=None,
    errors=(401,),
    summary="Trade a refresh token for a new pair (the old one is spent; reuse revokes the login)",
)
async def refresh(ctx: Ctx, body: RefreshRequest) -> TokenOut:
    pair, user = await ctx.services.auth.refresh(body.refresh_token)
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
        user=MeOut.model_validate(identity(user)),
    )


@router.get("/auth/me", role="pending", summary="Who am I (any signed-in account, one still waiting for a role too)")
async def me(ctx: Ctx) -> MeOut:
    user = ctx.user
    return MeOut.model_validate({"kind": user.kind, "id": user.id, "name": user.name, "role": user.role})


@router.post(
    "/auth/logout", role="pending", summary="End this session (or every session with everywhere=true)"
)
async def logout(ctx: Ctx, body: LogoutRequest) -> None:
    await ctx.services.auth.logout(ctx.user, body.refresh_token, everywhere=body.everywhere)


@router.post(
    "/auth/password",
    role="pending",
    errors=(401, 429),
    summary="Change my password (ends my other sessions; limited like logins)",
)
async def change_password(ctx: Ctx, body: PasswordChange) -> None:
    principal = ctx.user
    if principal.kind != "user":
        raise Forbidden("API keys have no password", field="current_password")
    await ctx.services.auth.change_password(principal, ctx.client_ip, body.current_password, body.new_password)


@signup_router.post(
    "/auth/signup",
    role=None,
    status=201,
    errors=(409, 429),
    summary="Create an account with no access (role pending) until an admin grants a role (EVA_OPEN_SIGNUP)",
)
async def signup(ctx: Ctx, body: SignupRequest) -> UserOut:
    # Open signup must not open the recordings and transcripts (personal data) to anyone who asks: the
    # account can sign in and nothing more until an admin gives it a role.
    accounts.check_username(body.username)
    password_hash = await ctx.services.auth.hash_new_password(body.password)
    user = await ctx.services.db(
        lambda s: accounts.create_user(s, body.username, None, "pending", password_hash=password_hash)
    )
    return UserOut.model_validate(user)


# ------------------------------ users (admin) -----------------------------------------------------
@users.get("/users", role="admin", summary="List users")
async def list_users(ctx: Ctx) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in await ctx.services.db(accounts.list_users)]


@users.post("/users", role="admin", status=201, errors=(409,), summary="Create a user")
async def create_user(ctx: Ctx, body: UserCreate) -> UserOut:
    accounts.check_username(body.username)
    password_hash = await ctx.services.auth.hash_new_password(body.password)
    user = await ctx.services.db(
        lambda s: accounts.create_user(s, body.username, None, body.role, password_hash=password_hash)
    )
    return UserOut.model_validate(user)


@users.get("/users/{user_id}", role="admin", summary="Get a user")
async def get_user(ctx: Ctx, user_id: int) -> UserOut:
    return UserOut.model_validate(await ctx.services.db(lambda s: accounts.get_user(s, user_id)))


@users.patch(
    "/users/{user_id}",
    role="admin",
    errors=(409,),
    summary="Change a user's role, status or password (ends their sessions)",
)
async def update_user(ctx: Ctx, user_id: int, body: UserUpdate) -> UserOut:
    changes = body.model_dump(exclude_unset=True)
    if "password" in changes:  # hashed on the bcrypt pool, not in the database thread
        changes["password_hash"] = await ctx.services.auth.hash_new_password(changes.pop("password"))
    return UserOut.model_validate(
        await ctx.services.db(lambda s: accounts.update_user(s, user_id, **changes))
    )


@users.delete("/users/{user_id}", role="admin", errors=(409,), summary="Delete a user")
async def delete_user(ctx: Ctx, user_id: int) -> None:
    await ctx.services.db(lambda s: accounts.delete_user(s, user_id))


@users.get("/apikeys", role="admin", summary="List API keys (never the keys themselves)")
async def list_api_keys(ctx: Ctx) -> list[ApiKeyOut]:
    return [
        ApiKeyOut.model_validate(k) for k in await ctx.services.db(lambda s: list(accounts.list_api_keys(s)))
    ]


@users.post(
    "/apikeys",
    role="admin",
    status=201,
    summary="Create an API key owned by me (the key is in this response only; it dies with my admin role)",
)
async def create_api_key(ctx: Ctx, body: ApiKeyCreate) -> ApiKeyCreated:
    principal = ctx.user
    expires_at = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None

    def create(session: Session) -> tuple[ApiKey, str]:
        # A key made with another key inherits that key's owner, so it cannot outlive the person either.
        owner_id: int | None = principal.id
        if principal.kind == "api_key":
            maker = session.get(ApiKey, principal.id)
            owner_id = maker.owner_id if maker is not None else None
        return accounts.create_api_key(session, body.name, body.role, owner_id=owner_id, expires_at=expires_at)

    row, key = await ctx.services.db(create)
    return ApiKeyCreated.model_validate({**row.model_dump(), "key": key})


@users.delete("/apikeys/{key_id}", role="admin", summary="Revoke an API key")
async def revoke_api_key(ctx: Ctx, key_id: int) -> None:
    await ctx.services.db(lambda s: accounts.revoke_api_key(s, key_id))
