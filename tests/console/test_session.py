"""Sign-in, sign-out, the cookie session's CSRF rules and the first-run page, in a real browser and over HTTP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, expect
from sqlalchemy.engine import Engine
from sqlmodel import select

from admin_api import accounts
from admin_api.app import create_app
from models import User
from models.db import session_scope
from tests.api.conftest import FAST_ROUNDS, PASSWORD, Api, offline_settings
from tests.console.conftest import Console, close_console, open_console, shot
from voicebot.server import _first_run_token


async def test_sign_in_and_out(console: Console) -> None:
    page = await console.page()
    await page.goto(f"{console.base}/")
    await page.get_by_role("heading", name="Sign in to Eva").wait_for()
    await shot(page, "login")
    await page.get_by_label("User name").fill("admin")
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("invalid username or password").wait_for()
    page = await console.sign_in("admin", page)
    cookies = {c["name"]: c for c in await console.context.cookies()}
    assert cookies["eva_access"]["httpOnly"] and cookies["eva_refresh"]["httpOnly"]
    assert cookies["eva_access"]["sameSite"] == "Strict"
    assert not cookies["eva_csrf"]["httpOnly"]
    # No token where a script could read it.
    stored = await page.evaluate("() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
    assert "eyJ" not in stored
    assert "eyJ" not in await page.evaluate("() => document.cookie")
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in to Eva").wait_for()
    assert await page.evaluate("() => fetch('/api/v1/auth/me').then(r => r.status)") == 401
    await page.goto(f"{console.base}/#/calls")
    await page.wait_for_url(re.compile(r"#/login"))


async def test_account_password_change_and_admin_users(console: Console, browser: Browser) -> None:
    page = await console.sign_in("admin")
    await page.get_by_role("link", name="Account").click()
    await page.get_by_role("heading", name="Users").wait_for()
    # An admin adds a designer; the new account can sign in with that role.
    form = page.get_by_role("form", name="Add a user")
    await form.get_by_label("User name").fill("newcomer")
    await form.get_by_label("Password").fill("a new long password")
    await form.get_by_label("Role").select_option("designer")
    await form.get_by_role("button", name="Add user").click()
    await page.get_by_role("cell", name="newcomer").wait_for()
    _status, users = await console.api.call("GET", "/api/v1/users")
    assert {u["username"]: u["role"] for u in users}["newcomer"] == "designer"
    # The API's refusal shows at its field: the name is taken.
    await form.get_by_label("User name").fill("viewer")
    await form.get_by_label("Password").fill("a new long password")
    await form.get_by_role("button", name="Add user").click()
    await page.get_by_text("a user named 'viewer' already exists").wait_for()
    await shot(page, "account")

    # Cookies are per browser profile: the viewer signs in in a profile of their own.
    other = await open_console(console.api, browser)
    try:
        await viewer_account(other)
    finally:
        await close_console(other)


async def viewer_account(console: Console) -> None:
    viewer = await console.sign_in("viewer")
    await viewer.get_by_role("link", name="Account").click()
    await viewer.get_by_role("heading", name="Account").wait_for()
    assert await viewer.get_by_role("heading", name="Users").count() == 0
    assert await viewer.get_by_role("button", name="Create key").count() == 0
    await viewer.get_by_label("Current password").fill("not it")
    await viewer.get_by_label("New password").fill("an even longer password")
    await viewer.get_by_role("button", name="Change password").click()
    await viewer.get_by_text("the current password is wrong").wait_for()


async def test_an_expired_access_cookie_is_renewed_once_from_the_refresh_cookie(console: Console) -> None:
    page = await console.sign_in("viewer")
    before = {c["name"]: c["value"] for c in await console.context.cookies()}
    # The browser drops the access cookie when its Max-Age runs out: the same as deleting it.
    kept = [c for c in await console.context.cookies() if c["name"] != "eva_access"]
    await console.context.clear_cookies()
    await console.context.add_cookies(kept)  # type: ignore[arg-type]
    seen = len(console.requests)
    # Two reads at once: both wait for one renewal (a second would replay a spent refresh cookie).
    names = await page.evaluate("""async () => {
        const { get } = await import('/console/lib/api.js');
        const both = await Promise.all([get('/auth/me'), get('/auth/me')]);
        return both.map((me) => me.name);
    }""")
    assert names == ["viewer", "viewer"]
    after = {c["name"]: c["value"] for c in await console.context.cookies()}
    assert after["eva_refresh"] != before["eva_refresh"] and after["eva_access"]
    assert console.requests[seen:].count(f"{console.base}/api/v1/console/refresh") == 1
    # A renewed session still writes (its new CSRF token is the one the page sends).
    status = await page.evaluate("""async () => {
        const { api } = await import('/console/lib/api.js');
        try { await api('POST', '/auth/logout', {}); return 204; } catch (e) { return e.status; }
    }""")
    assert status == 204


async def test_first_run_page_creates_the_admin_with_the_printed_link(
        tmp_path: Path, sqlite_engine: Engine, browser: Browser) -> None:
    settings = offline_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(settings, sqlite_engine, offline_asterisk=True), host="127.0.0.1", port=0))
    await client.start_server()
    token = _first_run_token(settings, sqlite_engine)
    api = Api(client=client, settings=settings, engine=sqlite_engine, users={}, keys={})
    console = await open_console(api, browser)
    try:
        page = await console.page()
        await page.goto(f"{console.base}/")  # no admin yet: the console says how to start
        await page.get_by_role("heading", name="Welcome to Eva").wait_for()
        await page.get_by_label("Setup token").fill("guessed-token")
        await page.get_by_label("Admin user name").fill("owner")
        await page.get_by_label("Password").fill("a long first password")
        await page.get_by_role("button", name="Create the admin").click()
        await page.get_by_text("this setup token is wrong or spent").wait_for()
        await page.goto(f"{console.base}/#/setup?token={token}")  # the link `eva run` prints
        await page.get_by_label("Admin user name").fill("owner")
        await page.get_by_label("Password").fill("a long first password")
        assert "token" not in page.url  # read, then taken out of the address bar and history
        await shot(page, "setup")
        await page.get_by_role("button", name="Create the admin").click()
        await page.get_by_role("heading", name="Dashboard").wait_for()
        assert "owner · admin" in await page.locator("#who").inner_text()
        with session_scope(sqlite_engine) as session:
            assert [(u.username, u.role) for u in session.exec(select(User)).all()] == [("owner", "admin")]
    finally:
        await close_console(console)
        await client.close()


async def test_tabs_without_web_locks_take_turns_to_renew(console: Console) -> None:
    """Over plain HTTP on a LAN address the browser has no Web Locks: the localStorage lease must keep two tabs
    from spending one refresh cookie (which the server takes for theft, ending the login)."""
    await console.context.add_init_script("Object.defineProperty(navigator, 'locks', {value: undefined})")
    first = await console.sign_in("viewer")
    second = await console.page()
    await second.goto(f"{console.base}/#/account")
    await second.get_by_role("heading", name="Account").wait_for()
    renew = """async () => {
        const { renew } = await import('/console/lib/api.js');
        try { await renew(); return 'ok'; } catch (e) { return e.code; }
    }"""
    for _ in range(3):
        results = await asyncio.gather(first.evaluate(renew), second.evaluate(renew))
        assert list(results) == ["ok", "ok"]
        assert await first.evaluate("() => fetch('/api/v1/auth/me').then(r => r.status)") == 200
    assert await first.evaluate("() => navigator.locks") is None


async def test_an_account_waiting_for_a_role_sees_why_and_can_sign_out(console: Console) -> None:
    with session_scope(console.api.engine) as session:
        accounts.create_user(session, "newbie", PASSWORD, "pending", rounds=FAST_ROUNDS)
    page = await console.sign_in_as("newbie")
    await page.get_by_text("Your account is waiting for an admin to give it a role.").wait_for()
    assert await page.locator("#nav a").all_inner_texts() == ["Account"]
    await page.reload()  # the session survives a reload: /auth/me answers a pending account too
    await page.get_by_text("Your account is waiting for an admin to give it a role.").wait_for()
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in to Eva").wait_for()
    assert await page.evaluate("() => fetch('/api/v1/auth/me').then(r => r.status)") == 401
    # The admin sees who waits, and gives a role.
    admin = await console.sign_in("admin")
    await admin.goto(f"{console.base}/#/account")
    role = admin.get_by_label("Role of newbie")
    await expect(role).to_have_value("pending")
    await admin.get_by_role("row", name="newbie").get_by_text("waiting for a role").wait_for()
    await role.select_option("viewer")
    await admin.get_by_text("newbie is now viewer.").wait_for()
