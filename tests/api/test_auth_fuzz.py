"""Hypothesis fuzz of the unauthenticated and credential-checking endpoints (login, refresh, password change)
through the real aiohttp server: arbitrary bodies, content types and credential headers must only ever get a
documented 4xx with our JSON error body, never a 5xx or a hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_api.auth import LoginLimiter
from models.db import make_engine, upgrade
from tests.api.conftest import Api, offline_settings, start_api

ENDPOINTS = ("/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/password")

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=40))
_json_value = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
_fields = st.sampled_from(["username", "password", "refresh_token", "current_password", "new_password",
                           "everywhere", "extra"])
_bodies = st.one_of(
    st.dictionaries(_fields, _json_value, max_size=5).map(lambda d: json.dumps(d).encode()),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)
_authorization = st.one_of(
    st.none(), _header_text, st.just("Bearer VALID"), _header_text.map(lambda t: f"Bearer {t}"),
    _header_text.map(lambda t: f"Bearer eva_{t}"))


class Loop:
    """One event loop and one running API for all examples (a fresh server per example would be slow)."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = make_engine(f"sqlite:///{tmp / 'fuzz.db'}")
        upgrade(self.engine)
        # A roomy limiter: the fuzz must reach the parsers and bcrypt paths, not only the 429 shortcut.
        limiter = LoginLimiter(per_pair=10_000, per_ip=10_000, per_user=10_000)
        self.api: Api = self.loop.run_until_complete(
            start_api(offline_settings(tmp / "data"), self.engine, offline_asterisk=True, login_limiter=limiter))

    def close(self) -> None:
        self.loop.run_until_complete(self.api.client.close())
        self.loop.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    loop = Loop(tmp_path_factory.mktemp("fuzz"))
    yield loop
    loop.close()


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(ENDPOINTS), body=_bodies, authorization=_authorization,
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", ""]),
       api_key=st.one_of(st.none(), _header_text), forwarded=st.one_of(st.none(), _header_text))
def test_auth_endpoints_answer_every_input_with_a_json_4xx_or_success(
        running: Loop, path: str, body: bytes, authorization: str | None, content_type: str,
        api_key: str | None, forwarded: str | None) -> None:
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("VALID", running.api.tokens["viewer"])
    if api_key is not None:
        headers["X-API-Key"] = api_key
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    if content_type:
        headers["Content-Type"] = content_type

    async def send() -> tuple[int, Any, str]:
        response = await running.api.client.post(path, data=body, headers=headers)
        raw = await response.read()
        return response.status, raw, response.content_type

    status, raw, media = running.loop.run_until_complete(asyncio.wait_for(send(), 30))
    assert status < 500, (status, raw)
    if status >= 400:
        assert media == "application/json", (status, raw)
        error = json.loads(raw)["error"]
        assert set(error) == {"code", "message", "field"} and error["code"] and error["message"]
    else:
        # Success needs a well-formed body with real credentials: only the valid token's password change or
        # a refresh could succeed, and the fuzz never knows the password or a refresh token.
        assert status in (200, 204), (status, raw)
