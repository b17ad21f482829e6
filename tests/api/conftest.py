"""Fixtures of the admin API tests: a real aiohttp server on 127.0.0.1 (random port) over a real, migrated
database (SQLite; PostgreSQL where a test asks for ``api_db``), with one user and one API key per role."""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import Engine

from admin_api import accounts
from admin_api.app import create_app
from models.db import make_engine, session_scope, upgrade
from voicebot.config import Settings

ROLES = ("viewer", "designer", "admin")
PASSWORD = "correct horse battery"
FAST_ROUNDS = 4
"""bcrypt cost for test users: the hash format and checks are the same, only faster than production's 12."""


def closed_port() -> int:
    """A TCP port nothing listens on (health checks of absent services must fail fast, not hang)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def offline_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings of an API without Asterisk; built directly (never from this machine's environment)."""
    return Settings(data_dir=data_dir, jwt_secret=secrets.token_urlsafe(32), ari_password="ari-test",
                    ami_password="ami-test", ari_port=closed_port(), ami_port=closed_port(), **changes)


def seed_principals(engine: Engine) -> tuple[dict[str, int], dict[str, str]]:
    """One user per role (username = role) and one API key per role.  A database that already has them (a voice
    runtime shared by several test modules of one worker) keeps its users and gets fresh keys."""
    users: dict[str, int] = {}
    keys: dict[str, str] = {}
    with session_scope(engine) as session:
        for role in ROLES:
            user = accounts.find_user(session, role) or accounts.create_user(session, role, PASSWORD, role,
                                                                             rounds=FAST_ROUNDS)
            assert user.id is not None
            users[role] = user.id
            _row, keys[role] = accounts.create_api_key(session, f"{role}-key", role)
    return users, keys


@dataclass
class Api:
    """A running admin API and credentials for every role."""

    client: TestClient[web.Request, web.Application]
    settings: Settings
    engine: Engine
    users: dict[str, int]
    keys: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.client.app

    def auth(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post("/api/v1/auth/login", json={"username": username, "password": password})
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

    async def call(self, method: str, path: str, *, role: str | None = "admin", json: Any = None,
                   headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
        """Request ``path`` as ``role``; returns (status, decoded JSON or text)."""
        merged = {**self.auth(role), **(headers or {})}
        response = await self.client.request(method, path, json=json, headers=merged, **kwargs)
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


class ServedAsEvaServes(TestServer):
    """aiohttp's test server with the server settings ``eva run`` uses.  The test server cancels a handler when its
    client disconnects; Eva's ``web.AppRunner`` does not (aiohttp's default), so code that must notice a client
    leaving (a streamed reply) is tested as it runs in production."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def start_api(settings: Settings, engine: Engine, **kwargs: Any) -> Api:
    users, keys = seed_principals(engine)
    app = create_app(settings, engine, **kwargs)
    client: TestClient[web.Request, web.Application] = TestClient(ServedAsEvaServes(app, host="127.0.0.1", port=0))
    await client.start_server()
    api = Api(client=client, settings=settings, engine=engine, users=users, keys=keys)
    for role in ROLES:
        body = await api.login(role)
        api.tokens[role] = body["access_token"]
        api.refresh[role] = body["refresh_token"]
    return api


async def delete_trunks(api: Api) -> None:
    """Delete every SIP trunk a test made through the API (so the next module's Asterisk has none of them)."""
    _, trunks = await api.call("GET", "/api/v1/sip/trunks")
    for trunk in trunks:
        await api.call("DELETE", f"/api/v1/sip/trunks/{trunk['id']}")


@contextlib.asynccontextmanager
async def voice_admin_api(runtime: Any) -> AsyncIterator[Api]:
    """The admin API on a voice runtime's database, placing calls through its ARI (as ``eva run`` wires it); the
    trunks made through it are deleted at the end."""
    from voicebot.callcontrol import AriCallControl

    assert runtime.engine is not None and runtime.voice is not None
    api = await start_api(runtime.settings, runtime.engine, call_control=AriCallControl(runtime.voice.ari),
                          admission=runtime.voice.admission)
    try:
        yield api
    finally:
        await delete_trunks(api)
        await api.client.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def new_engine(tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Makes more fresh SQLite databases (for a second server in one test)."""
    made: list[Engine] = []

    def make() -> Engine:
        engine = make_engine(f"sqlite:///{tmp_path / f'extra{len(made)}.db'}")
        upgrade(engine)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh migrated database: a SQLite file, then a real PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'api.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def api(tmp_path: Path, sqlite_engine: Engine) -> AsyncIterator[Api]:
    """The API without Asterisk, knowledge base or LLM, on SQLite."""
    running = await start_api(offline_settings(tmp_path / "data"), sqlite_engine, offline_asterisk=True)
    yield running
    await running.client.close()


@pytest.fixture
async def api_db(tmp_path: Path, any_engine: Engine) -> AsyncIterator[Api]:
    """The same API on SQLite and on PostgreSQL."""
    running = await start_api(offline_settings(tmp_path / "data"), any_engine, offline_asterisk=True)
    yield running
    await running.client.close()
