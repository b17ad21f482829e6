"""The console's routes: its page and files at ``/``, its cookie session and first-run setup, its live events.

The page is a build-free ES-module app (``static/``): nothing to compile, nothing fetched from another origin at run
time, each screen one small module a Python team can read.  Every file is served with a strict Content Security
Policy (scripts and styles from this origin only, no inline script, no framing), so even text that slipped into
the page unescaped could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field

from admin_api import accounts
from admin_api.auth import require_role
from admin_api.console import session as cookies
from admin_api.framework import ApiRouter, Ctx, json_dumps
from admin_api.handlers.auth import identity
from admin_api.schemas import Input, LoginRequest, MeOut, Output
from admin_api.sse import EventStream
from models import User
from voicebot.errors import AuthError, Conflict, EvaError, Forbidden, RateLimited
from voicebot.events import HUB, TooManyWatchers

log = logging.getLogger(__name__)

router = ApiRouter("console")

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load: an upgraded Eva never runs yesterday's script against today's API.
    "Cache-Control": "no-cache",
}
RECHECK_S = 15.0
"""How often an open event stream re-checks its credentials (a signed-out or disabled user stops watching)."""
STATIC_PATH = r"[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+){0,3}\.(?:js|css|svg|html)"
"""A file below ``static/``: plain names, at most four folders deep, no dot segments (no way out of the folder)."""


class ConsoleSession(Output):
    user: MeOut
    csrf_token: str
    """Also in the readable ``eva_csrf`` cookie: send it as ``X-CSRF-Token`` with every unsafe request."""
    expires_in: int
    """Seconds the access cookie lives; the page refreshes through ``/console/refresh`` when it runs out."""


class SetupState(Output):
    needed: bool
    """True while no active admin exists: the console shows the first-run page."""


class SetupRequest(Input):
    token: str = Field(min_length=1, max_length=200)
    username: str = Field(min_length=3, max_length=80)
    password: str = Field(min_length=8, max_length=1024)


def _session_response(ctx: Ctx, access_token: str, refresh_token: str, user: User) -> web.Response:
    auth = ctx.services.auth
    csrf = auth.csrf_for(access_token)
    body = ConsoleSession(user=MeOut.model_validate(identity(user)), csrf_token=csrf, expires_in=auth.access_ttl)
    response = web.json_response(body.model_dump(mode="json"), dumps=json_dumps)
    cookies.set_session_cookies(response, ctx.request, access_token=access_token, access_ttl=auth.access_ttl,
                                refresh_token=refresh_token, refresh_ttl=auth.refresh_ttl, csrf=csrf)
    return response


# ------------------------------------------------------------------ session
@router.post("/console/login", role=None, errors=(401, 403, 429),
             summary="Console sign-in: the session goes into httpOnly cookies (the body says who and the CSRF token)")
async def console_login(ctx: Ctx, body: LoginRequest) -> web.Response:
    cookies.check_origin(ctx.request)
    pair, user = await ctx.services.auth.login(ctx.client_ip, body.username, body.password)
    return _session_response(ctx, pair.access_token, pair.refresh_token, user)


@router.post("/console/refresh", role=None, errors=(401, 403),
             summary="Renew the console session from its refresh cookie (the old one is spent)")
async def console_refresh(ctx: Ctx) -> web.Response:
    cookies.check_origin(ctx.request)
    token = ctx.request.cookies.get(cookies.REFRESH_COOKIE, "")
    if not token:
        raise AuthError("no console session: sign in", code="unauthorized")
    pair, user = await ctx.services.auth.refresh(token)
    return _session_response(ctx, pair.access_token, pair.refresh_token, user)


@router.post("/console/logout", role="pending", summary="Console sign-out: ends this session and clears its cookies")
async def console_logout(ctx: Ctx) -> web.Response:
    refresh = ctx.request.cookies.get(cookies.REFRESH_COOKIE) or None
    try:
        await ctx.services.auth.logout(ctx.user, refresh, everywhere=False)
    except AuthError:
        # A refresh cookie of another login (or none that decodes): the access token is denied anyway.
        await ctx.services.auth.logout(ctx.user, None, everywhere=False)
    response = web.Response(status=204)
    cookies.clear_session_cookies(response)
    return response


# ------------------------------------------------------------------ first run
@router.get("/console/setup", role=None, summary="Whether the first admin still has to be created")
async def setup_state(ctx: Ctx) -> SetupState:
    return SetupState(needed=await ctx.services.db(accounts.active_admins) == 0)


@router.post("/console/setup", role=None, errors=(403, 409),
             summary="First run: create the first admin with the one-time token `eva run` printed, and sign in")
async def setup_first_admin(ctx: Ctx, body: SetupRequest) -> web.Response:
    cookies.check_origin(ctx.request)
    data_dir = ctx.services.settings.data_dir
    if await ctx.services.db(accounts.active_admins) > 0:
        raise Conflict("an admin exists already: sign in (admins add users under Account)", code="setup_done")
    accounts.check_username(body.username)
    accounts.check_password(body.password)
    if not await asyncio.to_thread(cookies.setup_token_matches, data_dir, body.token):
        raise Forbidden("this setup token is wrong or spent: use the one `eva run` printed last", code="setup_token",
                        field="token")
    # Claim the token before creating anyone: of two requests with it, exactly one renames the file.
    path = cookies.setup_token_path(data_dir)
    claimed = path.with_name(f"{path.name}.{secrets.token_hex(6)}.claimed")
    try:
        await asyncio.to_thread(os.rename, path, claimed)
    except FileNotFoundError as exc:
        raise Forbidden("this setup token was just spent", code="setup_token", field="token") from exc
    password_hash = await ctx.services.auth.hash_new_password(body.password)

    def create(session: Any) -> User:
        if accounts.active_admins(session) > 0:
            raise Conflict("an admin exists already: sign in", code="setup_done")
        return accounts.create_user(session, body.username, None, "admin", password_hash=password_hash)

    try:
        user = await ctx.services.db(create)
    except BaseException:
        with contextlib.suppress(OSError):  # not spent after all: the printed token still works
            os.rename(claimed, path)
        raise
    with contextlib.suppress(OSError):
        claimed.unlink()
    log.warning("first admin %r created through the console's setup page", user.username)
    pair, user = await ctx.services.auth.login(ctx.client_ip, body.username, body.password)
    return _session_response(ctx, pair.access_token, pair.refresh_token, user)


# ------------------------------------------------------------------ live events
@router.get("/console/events", role="viewer", errors=(429,),
            response_media={"text/event-stream": {"type": "string"}},
            summary="Live events (SSE): calls starting, answered, each turn, ending; messages stored. Ids only")
async def console_events(ctx: Ctx) -> web.StreamResponse:
    principal = ctx.user
    subscription = HUB.subscribe(owner=f"{principal.kind}:{principal.id}")
    try:
        watcher = await subscription.__aenter__()
    except TooManyWatchers as exc:
        raise RateLimited(str(exc), retry_after=10, code="too_many_watchers") from exc
    auth = ctx.services.auth
    # The stream ends a little before the session it was opened with (a random part of a minute, so the tabs
    # of one browser do not all renew at the same instant); the page renews and reconnects.
    ttl = auth.access_ttl
    ends_at = (principal.token_expires_at or (time.time() + ttl)) - random.uniform(0, min(60.0, ttl / 4))
    loop = asyncio.get_running_loop()

    async def still_allowed() -> bool:
        """Signed out, disabled, demoted, key revoked: the same checks a new request gets."""
        try:
            require_role(await auth.authenticate(ctx.request), "viewer")
        except EvaError:
            return False
        return True

    async def produce(send: Any) -> None:
        await send("ready", {"watchers": HUB.watchers})
        recheck_at = loop.time() + RECHECK_S
        told_dropped = 0
        while True:
            if time.time() >= ends_at:
                await send("expired", {})
                return
            if loop.time() >= recheck_at:
                if not await still_allowed():
                    await send("expired", {})
                    return
                recheck_at = loop.time() + RECHECK_S
            wait = max(0.0, min(ends_at - time.time(), recheck_at - loop.time()))
            try:
                event = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
            except TimeoutError:
                continue
            if watcher.dropped > told_dropped:  # it fell behind: what it shows may miss something, refetch
                await send("lagged", {"dropped": watcher.dropped - told_dropped})
                told_dropped = watcher.dropped
            await send("eva", {"kind": event.kind, "at": event.at, **event.data})

    try:
        return await EventStream(ctx.request, SECURITY_HEADERS | {"Cache-Control": "no-cache"}).run(produce)
    finally:
        await subscription.__aexit__(None, None, None)


# ------------------------------------------------------------------ the page and its files
def _static(relative: str) -> web.FileResponse:
    path = (STATIC_DIR / relative).resolve()
    if not path.is_relative_to(STATIC_DIR.resolve()) or not path.is_file():
        raise web.HTTPNotFound()
    headers = dict(SECURITY_HEADERS)
    headers["Content-Type"] = CONTENT_TYPES[path.suffix] + "; charset=utf-8"
    return web.FileResponse(path, headers=headers)


@router.get("/", role=None, absolute=True, response_media={"text/html": {"type": "string"}},
            summary="The web console")
async def console_page(ctx: Ctx) -> web.StreamResponse:
    return _static("index.html")


@router.get("/console/{path}", role=None, absolute=True, path_patterns={"path": STATIC_PATH},
            response_media={"text/javascript": {"type": "string"}}, summary="The console's scripts and styles")
async def console_file(ctx: Ctx, path: str) -> web.StreamResponse:
    return _static(path)
