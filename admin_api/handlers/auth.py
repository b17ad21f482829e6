"""Login, token refresh and logout, the caller's own identity and password; users and API keys (admins)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from admin_api import accounts
from admin_api.framework import ApiRouter, Ctx
from admin_api.passwords import verify_password
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
from models import User
from voicebot.errors import AuthError, Forbidden

router = ApiRouter("auth")
users = ApiRouter("users")
signup_router = ApiRouter("auth")
"""Mounted only when ``settings.open_signup`` is on."""


def _me(user: User) -> dict[str, Any]:
    return {"kind": "user", "id": user.id, "name": user.username, "role": user.role}


@router.post("/auth/login", role=None, errors=(401, 429), summary="Log in: access + refresh token")
async def login(ctx: Ctx, body: LoginRequest) -> TokenOut:
    pair, user = await ctx.services.auth.login(ctx.client_ip, body.username, body.password)
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
        user=MeOut.model_validate(_me(user)),
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
        user=MeOut.model_validate(_me(user)),
    )


@router.get("/auth/me", role="viewer", summary="Who am I")
async def me(ctx: Ctx) -> MeOut:
    user = ctx.user
    return MeOut.model_validate({"kind": user.kind, "id": user.id, "name": user.name, "role": user.role})


@router.post(
    "/auth/logout", role="viewer", summary="End this session (or every session with everywhere=true)"
)
async def logout(ctx: Ctx, body: LogoutRequest) -> None:
    await ctx.services.auth.logout(ctx.user, body.refresh_token, everywhere=body.everywhere)


@router.post(
    "/auth/password", role="viewer", errors=(401,), summary="Change my password (ends my other sessions)"
)
async def change_password(ctx: Ctx, body: PasswordChange) -> None:
    principal = ctx.user
    if principal.kind != "user":
        raise Forbidden("API keys have no password", field="current_password")

    def change(session: Session) -> None:
        user = accounts.get_user(session, principal.id)
        if not verify_password(body.current_password, user.password_hash):
            raise AuthError(
                "the current password is wrong", code="invalid_credentials", field="current_password"
            )
        accounts.update_user(session, principal.id, password=body.new_password)

    await ctx.services.db(change)


@signup_router.post(
    "/auth/signup",
    role=None,
    status=201,
    errors=(409,),
    summary="Create a viewer account (only when EVA_OPEN_SIGNUP is on)",
)
async def signup(ctx: Ctx, body: SignupRequest) -> UserOut:
    user = await ctx.services.db(lambda s: accounts.create_user(s, body.username, body.password, "viewer"))
    return UserOut.model_validate(user)


# ------------------------------ users (admin) -----------------------------------------------------
@users.get("/users", role="admin", summary="List users")
async def list_users(ctx: Ctx) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in await ctx.services.db(accounts.list_users)]


@users.post("/users", role="admin", status=201, errors=(409,), summary="Create a user")
async def create_user(ctx: Ctx, body: UserCreate) -> UserOut:
    user = await ctx.services.db(lambda s: accounts.create_user(s, body.username, body.password, body.role))
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
    "/apikeys", role="admin", status=201, summary="Create an API key (the key is in this response only)"
)
async def create_api_key(ctx: Ctx, body: ApiKeyCreate) -> ApiKeyCreated:
    row, key = await ctx.services.db(lambda s: accounts.create_api_key(s, body.name, body.role))
    return ApiKeyCreated.model_validate({**row.model_dump(), "key": key})


@users.delete("/apikeys/{key_id}", role="admin", summary="Revoke an API key")
async def revoke_api_key(ctx: Ctx, key_id: int) -> None:
    await ctx.services.db(lambda s: accounts.revoke_api_key(s, key_id))
