"""The console's cookie session over real HTTP: cookie flags, CSRF and Origin rules, refresh rotation, sign-out,
first-run setup with the one-time token, the static files' headers and confinement, and the live event stream."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import Engine

from admin_api.app import create_app
from admin_api.console import routes as console_routes
from admin_api.console import session as cookies
from admin_api.sse import decode
from models import Conversation, Message
from models.db import session_scope
from tests.api.conftest import PASSWORD, Api, offline_settings
from voicebot import events
from voicebot.calls import store
from voicebot.server import _first_run_token


def browser_like(api: Api) -> ClientSession:
    """A client that keeps cookies like a browser (aiohttp's jar refuses IP-address hosts unless told)."""
    return ClientSession(base_url=str(api.client.make_url("")), cookie_jar=CookieJar(unsafe=True))


async def cookie_login(api: Api, username: str = "admin") -> tuple[ClientSession, str, dict[str, Any]]:
    """A browser-like client (its own cookie jar) signed in through the console; returns it, its CSRF token and
    the answer body."""
    client = browser_like(api)
    response = await client.post("/api/v1/console/login", json={"username": username, "password": PASSWORD})
    body = await response.json()
    assert response.status == 200, body
    return client, body["csrf_token"], body


def set_cookie_headers(response: Any) -> dict[str, str]:
    return {value.split("=", 1)[0]: value for value in response.headers.getall("Set-Cookie", [])}


async def test_login_sets_httponly_strict_cookies_and_no_token_in_the_body(api: Api) -> None:
    async with browser_like(api) as client:
        response = await client.post("/api/v1/console/login", json={"username": "designer", "password": PASSWORD})
        body = await response.json()
        assert response.status == 200, body
        assert body["user"] == {"kind": "user", "id": api.users["designer"], "name": "designer", "role": "designer"}
        assert "access_token" not in body and "refresh_token" not in body
        headers = set_cookie_headers(response)
        assert {"eva_access", "eva_refresh", "eva_csrf"} <= set(headers)
        for name in ("eva_access", "eva_refresh"):
            assert "HttpOnly" in headers[name] and "SameSite=Strict" in headers[name], headers[name]
        assert "HttpOnly" not in headers["eva_csrf"] and "SameSite=Strict" in headers["eva_csrf"]
        assert "Path=/api/v1/console" in headers["eva_refresh"]
        assert f"eva_csrf={body['csrf_token']}" in headers["eva_csrf"]
        # The cookie authenticates reads ...
        me = await client.get("/api/v1/auth/me")
        assert (me.status, (await me.json())["name"]) == (200, "designer")


async def test_unsafe_requests_by_cookie_need_this_sessions_csrf_token_and_our_origin(api: Api) -> None:
    client, csrf, _ = await cookie_login(api)
    async with client:
        agent = {"name": "csrf-agent"}
        response = await client.post("/api/v1/agents", json=agent)
        assert (response.status, (await response.json())["error"]["code"]) == (401, "csrf_failed")
        response = await client.post("/api/v1/agents", json=agent, headers={"X-CSRF-Token": "0" * 64})
        assert (response.status, (await response.json())["error"]["code"]) == (401, "csrf_failed")
        # Another session's token is no good either: it is bound to the access token it came with.
        other, other_csrf, _ = await cookie_login(api)
        await other.close()
        response = await client.post("/api/v1/agents", json=agent, headers={"X-CSRF-Token": other_csrf})
        assert response.status == 401
        evil = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        response = await client.post("/api/v1/agents", json=agent, headers=evil)
        assert (response.status, (await response.json())["error"]["code"]) == (403, "cross_origin")
        response = await client.post("/api/v1/agents", json=agent, headers={"X-CSRF-Token": csrf, "Origin": "null"})
        assert response.status == 403
        origin = str(api.client.make_url("")).rstrip("/")
        response = await client.post("/api/v1/agents", json=agent, headers={"X-CSRF-Token": csrf, "Origin": origin})
        assert response.status == 201, await response.text()
        # A Bearer header always wins over the cookie: a viewer's token with an admin's cookie is a viewer.
        response = await client.post("/api/v1/agents", json={"name": "as-viewer"},
                                     headers={"Authorization": f"Bearer {api.tokens['viewer']}"})
        assert response.status == 403
    _, agents = await api.call("GET", "/api/v1/agents")
    assert [a["name"] for a in agents if a["name"] in ("csrf-agent", "as-viewer")] == ["csrf-agent"]


async def test_cross_origin_login_is_refused(api: Api) -> None:
    async with ClientSession(base_url=str(api.client.make_url(""))) as client:
        response = await client.post("/api/v1/console/login", json={"username": "admin", "password": PASSWORD},
                                     headers={"Origin": "http://evil.example"})
        assert (response.status, (await response.json())["error"]["code"]) == (403, "cross_origin")
        assert "eva_access" not in set_cookie_headers(response)


async def test_refresh_rotates_and_a_replayed_refresh_cookie_ends_the_login(api: Api) -> None:
    client, _csrf, _ = await cookie_login(api, "viewer")
    async with client:
        spent = client.cookie_jar.filter_cookies(api.client.make_url("/api/v1/console/refresh"))["eva_refresh"].value
        response = await client.post("/api/v1/console/refresh")
        body = await response.json()
        assert response.status == 200, body
        assert body["user"]["name"] == "viewer"
        fresh = client.cookie_jar.filter_cookies(api.client.make_url("/api/v1/console/refresh"))["eva_refresh"].value
        assert fresh != spent
        assert (await client.get("/api/v1/auth/me")).status == 200
        # Someone replays the spent cookie: the whole login is revoked, the fresh refresh cookie too.
        async with ClientSession(base_url=str(api.client.make_url(""))) as thief:
            response = await thief.post("/api/v1/console/refresh", headers={"Cookie": f"eva_refresh={spent}"})
            assert (response.status, (await response.json())["error"]["code"]) == (401, "token_reused")
        response = await client.post("/api/v1/console/refresh")
        assert response.status == 401
    async with ClientSession(base_url=str(api.client.make_url(""))) as anonymous:
        response = await anonymous.post("/api/v1/console/refresh")
        assert (response.status, (await response.json())["error"]["code"]) == (401, "unauthorized")


async def test_logout_clears_the_cookies_and_the_old_access_cookie_is_dead(api: Api) -> None:
    client, csrf, _ = await cookie_login(api, "viewer")
    async with client:
        access = client.cookie_jar.filter_cookies(api.client.make_url("/"))["eva_access"].value
        response = await client.post("/api/v1/console/logout", headers={"X-CSRF-Token": csrf})
        assert response.status == 204
        assert (await client.get("/api/v1/auth/me")).status == 401  # the jar dropped it
        assert (await client.post("/api/v1/console/refresh")).status == 401
    async with ClientSession(base_url=str(api.client.make_url(""))) as replay:
        response = await replay.get("/api/v1/auth/me", headers={"Cookie": f"eva_access={access}"})
        assert (response.status, (await response.json())["error"]["code"]) == (401, "token_revoked")


# ------------------------------------------------------------------ first run
@pytest.fixture
async def bare(tmp_path: Path, sqlite_engine: Engine) -> Any:
    """An API over a database with no user at all (a fresh install)."""
    settings = offline_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(settings, sqlite_engine, offline_asterisk=True), host="127.0.0.1", port=0))
    await client.start_server()
    yield client, settings, sqlite_engine
    await client.close()


async def test_first_run_needs_the_printed_token_and_it_works_once(bare: Any) -> None:
    client, settings, engine = bare
    assert await (await client.get("/api/v1/console/setup")).json() == {"needed": True}
    first = {"token": "x" * 32, "username": "root-admin", "password": "a long password"}
    # Before `eva run` printed a token nobody can take the install over.
    response = await client.post("/api/v1/console/setup", json=first)
    assert (response.status, (await response.json())["error"]["code"]) == (403, "setup_token")
    token = _first_run_token(settings, engine)
    path = cookies.setup_token_path(settings.data_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    response = await client.post("/api/v1/console/setup", json={**first, "token": token + "x"})
    assert response.status == 403
    # A bad password is refused without spending the token.
    response = await client.post("/api/v1/console/setup", json={**first, "token": token, "password": "short"})
    assert response.status == 422 and path.exists()
    # Two at once with the right token: exactly one admin is made.
    answers = await asyncio.gather(
        client.post("/api/v1/console/setup", json={**first, "token": token}),
        client.post("/api/v1/console/setup", json={**first, "token": token, "username": "second-admin"}))
    statuses = sorted(r.status for r in answers)
    assert statuses[0] == 200 and statuses[1] in (403, 409), statuses
    winner = next(r for r in answers if r.status == 200)
    assert (await winner.json())["user"]["role"] == "admin"
    assert not path.exists()
    assert await (await client.get("/api/v1/console/setup")).json() == {"needed": False}
    response = await client.post("/api/v1/console/setup", json={**first, "token": token, "username": "third"})
    assert response.status in (403, 409)
    # With an admin in place `eva run` prints no token (and removes a stale one).
    path.write_text("stale")
    assert _first_run_token(settings, engine) == ""
    assert not path.exists()


# ------------------------------------------------------------------ the page and its files
async def test_page_and_files_carry_a_strict_policy_and_stay_in_their_folder(api: Api) -> None:
    response = await api.client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert '<script type="module" src="/console/app.js">' in await response.text()
    script = await api.client.get("/console/app.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert (await api.client.get("/console/lib/api.js")).status == 200
    for escape in ("/console/../routes.py", "/console/%2e%2e/routes.py", "/console/lib/..%2f..%2froutes.py",
                   "/console/session.py", "/console/..%5croutes.py", "/console/app.js%00.js", "/console/nope.js"):
        response = await api.client.get(escape)
        assert response.status == 404, escape


# ------------------------------------------------------------------ live events
async def read_events(response: Any, wanted: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
    text = ""
    async with asyncio.timeout(timeout):
        while len(decode(text)) < wanted:
            chunk = await response.content.readany()
            assert chunk, "the stream ended"
            text += chunk.decode()
    return decode(text)


async def test_events_stream_what_the_stores_commit(api: Api) -> None:
    client, _csrf, _ = await cookie_login(api, "viewer")
    async with client, client.get("/api/v1/console/events") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        assert (await read_events(response, 1))[0][0] == "ready"
        call_id, _ = await asyncio.to_thread(store.create_call, api.engine, channel_id="chan-1",
                                             caller="+15550001111", did="100", agent_id=None)

        def add_message() -> int:
            with session_scope(api.engine) as session:
                conversation = Conversation(channel="chat")
                session.add(conversation)
                session.flush()
                assert conversation.id is not None
                session.add(Message(conversation_id=conversation.id, role="user", text="hello there"))
                return conversation.id

        conversation_id = await asyncio.to_thread(add_message)
        got = await read_events(response, 2)
    kinds = [(name, data["kind"]) for name, data in got]
    assert kinds == [("eva", "call.started"), ("eva", "message.stored")]
    assert got[0][1]["call_id"] == call_id
    assert got[1][1]["conversation_id"] == conversation_id and got[1][1]["role"] == "user"
    # Ids and states only: the caller's number and words stay behind the API's role checks.
    assert "+15550001111" not in str(got) and "hello there" not in str(got)


async def test_events_need_a_session_and_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await api.client.get("/api/v1/console/events")).status == 401
    monkeypatch.setattr(events, "MAX_SUBSCRIBERS", 2)
    monkeypatch.setattr(events, "MAX_PER_OWNER", 1)
    headers = {"X-API-Key": api.keys["viewer"]}
    async with api.client.get("/api/v1/console/events", headers=headers) as first:
        await read_events(first, 1)
        # One watcher may not take every place: the same key's second stream is refused ...
        second = await api.client.get("/api/v1/console/events", headers=headers)
        assert (second.status, (await second.json())["error"]["code"]) == (429, "too_many_watchers")
        # ... and someone else still gets in, up to the process's limit.
        async with api.client.get("/api/v1/console/events", headers={"X-API-Key": api.keys["admin"]}) as other:
            assert other.status == 200
            third = await api.client.get("/api/v1/console/events", headers={"X-API-Key": api.keys["designer"]})
            assert third.status == 429
    # The first watcher left: its place is free again.
    for _ in range(100):  # the server notices within its disconnect poll (0.2 s)
        if not events.HUB.watchers:
            break
        await asyncio.sleep(0.05)
    async with api.client.get("/api/v1/console/events", headers=headers) as again:
        assert again.status == 200


async def test_a_stream_ends_soon_after_its_session_does(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_routes, "RECHECK_S", 0.3)
    client, csrf, _ = await cookie_login(api, "viewer")
    async with client:
        access = client.cookie_jar.filter_cookies(api.client.make_url("/"))["eva_access"].value
        async with browser_like(api) as watcher, watcher.get(
                "/api/v1/console/events", headers={"Cookie": f"eva_access={access}"}) as stream:
            assert (await read_events(stream, 1))[0][0] == "ready"
            assert (await client.post("/api/v1/console/logout", headers={"X-CSRF-Token": csrf})).status == 204
            got = await read_events(stream, 1, timeout=5)
            assert got[0][0] == "expired"
            assert await stream.content.read() == b""  # and the server closed it


async def test_a_watcher_that_fell_behind_is_told_so(api: Api) -> None:
    async with api.client.get("/api/v1/console/events", headers={"X-API-Key": api.keys["viewer"]}) as stream:
        await read_events(stream, 1)
        for n in range(events.QUEUE_SIZE + 44):  # all offered before the stream's writer runs again
            events.publish("call.turn", call_id=1, index=n)
        got = await read_events(stream, 2)
    assert got[0] == ("lagged", {"dropped": 44})
    assert got[1][1]["index"] == 44  # the oldest were dropped, the rest follow in order


def test_a_slow_watcher_loses_its_oldest_events_not_memory() -> None:
    async def scenario() -> list[int]:
        hub = events.EventHub()
        async with hub.subscribe() as watcher:
            queue = watcher.queue
            for n in range(events.QUEUE_SIZE + 10):
                hub.publish("call.turn", n=n)
            await asyncio.sleep(0)  # the offers run on this loop
            got = []
            while not queue.empty():
                got.append(queue.get_nowait().data["n"])
        assert hub.watchers == 0
        return got

    got = asyncio.run(scenario())
    assert len(got) == events.QUEUE_SIZE and got[0] == 10 and got[-1] == events.QUEUE_SIZE + 9


def test_a_rolled_back_message_is_never_announced(sqlite_engine: Engine) -> None:
    events.watch_messages()
    heard: list[Any] = []

    async def scenario() -> None:
        async with events.HUB.subscribe() as watcher:
            queue = watcher.queue

            def write() -> None:
                with pytest.raises(RuntimeError), session_scope(sqlite_engine) as session:
                    conversation = Conversation(channel="chat")
                    session.add(conversation)
                    session.flush()
                    assert conversation.id is not None
                    session.add(Message(conversation_id=conversation.id, role="user", text="x"))
                    session.flush()
                    raise RuntimeError("rolled back")

            await asyncio.to_thread(write)
            await asyncio.sleep(0.05)
            while not queue.empty():
                heard.append(queue.get_nowait())

    asyncio.run(scenario())
    assert [e for e in heard if e.kind == "message.stored"] == []
