"""Authentication: login, rate limits, refresh rotation with reuse detection, logout, API keys, sessions
ended by password/role/status changes, signup switch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from admin_api.auth import LoginLimiter
from models import ApiKey, RefreshToken
from models.db import session_scope
from tests.api.conftest import PASSWORD, Api, offline_settings, start_api
from voicebot.errors import RateLimited


async def test_login_returns_tokens_and_me(api: Api) -> None:
    body = await api.login("designer")
    assert body["token_type"] == "bearer"
    assert body["user"] == {"kind": "user", "id": api.users["designer"], "name": "designer", "role": "designer"}
    claims = jwt.decode(body["access_token"], api.settings.jwt_secret, algorithms=["HS256"], issuer="eva")
    assert claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == api.settings.access_token_minutes * 60
    status, me = await api.call("GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"},
                                role=None)
    assert (status, me["name"], me["role"]) == (200, "designer", "designer")


async def test_wrong_password_and_unknown_user_look_the_same(api: Api) -> None:
    wrong = await api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "nope"})
    unknown = await api.client.post("/api/v1/auth/login", json={"username": "ghost", "password": "nope"})
    assert wrong.status == unknown.status == 401
    assert (await wrong.json()) == (await unknown.json()) == {
        "error": {"code": "invalid_credentials", "message": "invalid username or password", "field": None}}
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bad_tokens_are_401_with_codes(api: Api) -> None:
    cases = {
        "Bearer not-a-jwt": "token_invalid",
        "Basic YWRtaW46eA==": "unauthorized",
        f"Bearer {api.refresh['admin']}": "token_invalid",  # a refresh token is not an access token
        "Bearer eva_deadbeef_not-a-real-key": "api_key_invalid",
    }
    for header, code in cases.items():
        status, body = await api.call("GET", "/api/v1/agents", role=None, headers={"Authorization": header})
        assert (status, body["error"]["code"]) == (401, code), header
    forged = jwt.encode({"iss": "eva", "sub": str(api.users["viewer"]), "typ": "access", "ver": 0, "jti": "x",
                         "iat": 0, "exp": 4102444800}, "another-secret-another-secret-0123456789", algorithm="HS256")
    status, body = await api.call("GET", "/api/v1/agents", role=None, headers={"Authorization": f"Bearer {forged}"})
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    expired = jwt.encode({"iss": "eva", "sub": str(api.users["viewer"]), "typ": "access", "ver": 0, "jti": "y",
                          "iat": 0, "exp": 1}, api.settings.jwt_secret, algorithm="HS256")
    status, body = await api.call("GET", "/api/v1/agents", role=None, headers={"Authorization": f"Bearer {expired}"})
    assert (status, body["error"]["code"]) == (401, "token_expired")


async def test_login_is_rate_limited_per_user_address_pair_and_per_address(
        tmp_path: Path, sqlite_engine: Engine) -> None:
    limiter = LoginLimiter(per_pair=3, per_ip=5, window_s=600)
    api = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True,
                          login_limiter=limiter)
    try:
        for _ in range(3):
            response = await api.client.post("/api/v1/auth/login", json={"username": "viewer", "password": "x"})
            assert response.status == 401
        # The fourth try is refused before the password is even checked, right one or not.
        response = await api.client.post("/api/v1/auth/login", json={"username": "viewer", "password": PASSWORD})
        body = await response.json()
        assert (response.status, body["error"]["code"], body["error"]["field"]) == (429, "rate_limited", "username")
        assert 1 <= int(response.headers["Retry-After"]) <= 600
        # Another user from the same address still gets in until the address budget (5 failures) is spent.
        await api.login("designer")
        for _ in range(2):
            response = await api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "x"})
            assert response.status == 401
        response = await api.client.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD})
        assert response.status == 429
        assert (await response.json())["error"]["field"] is None  # the address, not the user, is blocked
    finally:
        await api.client.close()


def test_limiter_window_slides() -> None:
    now = [1000.0]
    limiter = LoginLimiter(per_pair=2, per_ip=100, window_s=60, clock=lambda: now[0])
    limiter.reserve("1.2.3.4", "bob").failed()
    limiter.reserve("1.2.3.4", "Bob").failed()  # usernames are case-insensitive for counting
    with pytest.raises(RateLimited) as raised:
        limiter.reserve("1.2.3.4", "bob")
    assert 59 <= raised.value.retry_after <= 60
    now[0] += 61
    limiter.reserve("1.2.3.4", "bob").failed()
    limiter.reserve("1.2.3.4", "bob").succeeded()
    limiter.reserve("1.2.3.4", "bob")


async def test_refresh_rotates_and_reuse_revokes_the_family(api_db: Api) -> None:
    api = api_db
    first = await api.login("viewer")
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    second = await response.json()
    assert response.status == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user"]["name"] == "viewer"
    # The rotated pair works ...
    status, _ = await api.call("GET", "/api/v1/auth/me", role=None,
                               headers={"Authorization": f"Bearer {second['access_token']}"})
    assert status == 200
    # ... until the first (spent) refresh token is presented again: a thief replaying it ends the whole login.
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert (response.status, (await response.json())["error"]["code"]) == (401, "token_reused")
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert (response.status, (await response.json())["error"]["code"]) == (401, "token_reused")
    with session_scope(api.engine) as session:
        family = jwt.decode(first["refresh_token"], options={"verify_signature": False})["fam"]
        rows = session.exec(select(RefreshToken).where(RefreshToken.family == family)).all()
        assert len(rows) == 2 and all(row.revoked for row in rows)
    # Other logins of the same user are untouched.
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": api.refresh["viewer"]})
    assert response.status == 200


async def test_logout_ends_access_and_refresh(api: Api) -> None:
    body = await api.login("designer")
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    status, _ = await api.call("POST", "/api/v1/auth/logout", role=None, headers=headers,
                               json={"refresh_token": body["refresh_token"]})
    assert status == 204
    status, error = await api.call("GET", "/api/v1/auth/me", role=None, headers=headers)
    assert (status, error["error"]["code"]) == (401, "token_revoked")
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert response.status == 401
    # The fixture's own session of the same user is still alive.
    assert (await api.call("GET", "/api/v1/auth/me", role="designer"))[0] == 200
    # A plain logout needs no body at all.
    other = await api.login("designer")
    response = await api.client.post("/api/v1/auth/logout",
                                     headers={"Authorization": f"Bearer {other['access_token']}"})
    assert response.status == 204
    assert (await api.call("GET", "/api/v1/auth/me", role=None,
                           headers={"Authorization": f"Bearer {other['access_token']}"}))[0] == 401


async def test_logout_everywhere_and_password_change_end_all_sessions(api: Api) -> None:
    status, _ = await api.call("POST", "/api/v1/auth/logout", role="viewer", json={"everywhere": True})
    assert status == 204
    assert (await api.call("GET", "/api/v1/auth/me", role="viewer"))[0] == 401
    response = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": api.refresh["viewer"]})
    assert response.status == 401

    fresh = await api.login("designer")
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    status, error = await api.call("POST", "/api/v1/auth/password", role=None, headers=headers,
                                   json={"current_password": "wrong-one", "new_password": "a new password"})
    assert (status, error["error"]["field"]) == (401, "current_password")
    status, _ = await api.call("POST", "/api/v1/auth/password", role=None, headers=headers,
                               json={"current_password": PASSWORD, "new_password": "a new password"})
    assert status == 204
    assert (await api.call("GET", "/api/v1/auth/me", role=None, headers=headers))[0] == 401
    await api.login("designer", "a new password")


async def test_role_change_and_deactivation_take_effect_at_once(api: Api) -> None:
    designer = {"Authorization": f"Bearer {api.tokens['designer']}"}
    assert (await api.call("POST", "/api/v1/agents", role=None, headers=designer, json={"name": "x1"}))[0] == 201
    status, user = await api.call("PATCH", f"/api/v1/users/{api.users['designer']}", json={"role": "viewer"})
    assert (status, user["role"]) == (200, "viewer")
    assert (await api.call("GET", "/api/v1/agents", role=None, headers=designer))[0] == 401
    fresh = await api.login("designer")
    status, error = await api.call("POST", "/api/v1/agents", role=None, json={"name": "x2"},
                                   headers={"Authorization": f"Bearer {fresh['access_token']}"})
    assert (status, error["error"]["code"]) == (403, "forbidden")
    await api.call("PATCH", f"/api/v1/users/{api.users['designer']}", json={"active": False})
    response = await api.client.post("/api/v1/auth/login", json={"username": "designer", "password": PASSWORD})
    assert response.status == 401


async def test_last_admin_is_protected(api: Api) -> None:
    admin_id = api.users["admin"]
    for method, body in (("PATCH", {"role": "viewer"}), ("PATCH", {"active": False}), ("DELETE", None)):
        status, error = await api.call(method, f"/api/v1/users/{admin_id}", json=body)
        assert (status, error["error"]["code"]) == (409, "conflict"), (method, body)
    status, _ = await api.call("POST", "/api/v1/users", json={"username": "second", "password": "long enough!",
                                                               "role": "admin"})
    assert status == 201
    assert (await api.call("DELETE", f"/api/v1/users/{admin_id}"))[0] == 204


async def test_api_keys_both_headers_role_and_revocation(api: Api) -> None:
    key = api.keys["designer"]
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        status, me = await api.call("GET", "/api/v1/auth/me", role=None, headers=headers)
        assert (status, me["kind"], me["role"]) == (200, "api_key", "designer")
    status, _ = await api.call("GET", "/api/v1/users", role=None, headers={"X-API-Key": key})
    assert status == 403
    # Two credentials at once are refused, whichever is valid.
    status, error = await api.call("GET", "/api/v1/auth/me", role="admin", headers={"X-API-Key": key})
    assert (status, error["error"]["code"]) == (401, "ambiguous_credentials")
    # Right prefix, wrong secret: refused (the digest is compared, not the prefix).
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert (await api.call("GET", "/api/v1/auth/me", role=None, headers={"X-API-Key": tampered}))[0] == 401

    status, created = await api.call("POST", "/api/v1/apikeys", json={"name": "crm sync", "role": "viewer"})
    assert status == 201 and created["key"].startswith("eva_") and created["prefix"] in created["key"]
    status, listed = await api.call("GET", "/api/v1/apikeys")
    assert all("key" not in item for item in listed)
    with session_scope(api.engine) as session:
        stored = session.get(ApiKey, created["id"])
        assert stored is not None and created["key"] not in stored.key_hash
    assert (await api.call("GET", "/api/v1/auth/me", role=None, headers={"X-API-Key": created["key"]}))[0] == 200
    assert (await api.call("DELETE", f"/api/v1/apikeys/{created['id']}"))[0] == 204
    status, error = await api.call("GET", "/api/v1/auth/me", role=None, headers={"X-API-Key": created["key"]})
    assert (status, error["error"]["code"]) == (401, "api_key_invalid")


async def test_signup_only_when_enabled(api: Api, tmp_path: Path, new_engine: Callable[[], Engine]) -> None:
    response = await api.client.post("/api/v1/auth/signup", json={"username": "newbie", "password": "long enough"})
    assert response.status == 404
    open_api = await start_api(offline_settings(tmp_path / "open", open_signup=True), new_engine(),
                               offline_asterisk=True)
    try:
        response = await open_api.client.post("/api/v1/auth/signup",
                                               json={"username": "newbie", "password": "long enough"})
        body = await response.json()
        assert (response.status, body["role"]) == (201, "pending")  # no access until an admin grants a role
        await open_api.login("newbie", "long enough")
        response = await open_api.client.post("/api/v1/auth/signup",
                                               json={"username": "newbie", "password": "long enough"})
        assert response.status == 409
    finally:
        await open_api.client.close()


async def test_a_deleted_users_token_never_works_for_a_new_user(api: Api) -> None:
    from admin_api import accounts
    from models.db import session_scope
    from tests.api.conftest import FAST_ROUNDS, PASSWORD

    with session_scope(api.engine) as session:
        bob = accounts.create_user(session, "bob", PASSWORD, "viewer", rounds=FAST_ROUNDS)
    token = (await api.login("bob"))["access_token"]
    with session_scope(api.engine) as session:
        assert bob.id is not None
        accounts.delete_user(session, bob.id)
        alice = accounts.create_user(session, "alice", PASSWORD, "admin", rounds=FAST_ROUNDS)
    assert alice.id != bob.id  # ids are never reused
    response = await api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401
