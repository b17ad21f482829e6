"""Health and metrics under load (findings F10, L14): a flood of anonymous requests costs the dependencies one
probe per cache period, the ARI HTTP session is reused, and ``/metrics`` is not open to the world."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event
from sqlalchemy.engine import Engine

from admin_api.app import create_app
from tests.api.conftest import Api, offline_settings, start_api
from tests.fakes.ollama_server import FakeOllama
from voicebot.llm.ollama import OllamaLLM


class AriStandIn:
    """A real HTTP server in ARI's place that answers ``/ari/asterisk/ping`` and counts who asked."""

    def __init__(self) -> None:
        self.pings = 0
        self.peers: Counter[tuple[str, int]] = Counter()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _ping(self, request: web.Request) -> web.Response:
        self.pings += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers[(peer[0], peer[1])] += 1
        await asyncio.sleep(0.05)  # a little latency, so concurrent health requests overlap the probe
        return web.json_response({"ping": "pong", "asterisk_id": "x"})

    async def __aenter__(self) -> AriStandIn:
        app = web.Application()
        app.router.add_get("/ari/asterisk/ping", self._ping)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def ari() -> AsyncIterator[AriStandIn]:
    async with AriStandIn() as server:
        yield server


async def test_a_flood_of_anonymous_health_requests_probes_each_dependency_once(
        tmp_path: Path, sqlite_engine: Engine, ari: AriStandIn) -> None:
    async with FakeOllama() as ollama:
        settings = dataclasses.replace(offline_settings(tmp_path / "data"), ari_port=ari.port)
        llm = OllamaLLM(settings, url=ollama.url)
        api = await start_api(settings, sqlite_engine, offline_asterisk=True, llm=llm)
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                async def one() -> tuple[int, dict[str, Any]]:
                    async with session.get(api.client.make_url("/api/v1/health")) as response:
                        return response.status, await response.json()

                results = await asyncio.gather(*(one() for _ in range(300)))
            assert {status for status, _ in results} == {200}
            checks = {c["name"]: c for c in results[0][1]["checks"]}
            assert checks["asterisk_ari"]["status"] == "ok" and checks["llm"]["status"] == "ok"
            assert all(c["detail"] == "" for _, body in results for c in body["checks"])
            assert ari.pings == 1, ari.pings
            assert len(ollama.bodies("/api/tags")) == 1
        finally:
            await api.client.close()
            await llm.close()


async def test_health_reuses_one_ari_session(tmp_path: Path, sqlite_engine: Engine, ari: AriStandIn) -> None:
    settings = dataclasses.replace(offline_settings(tmp_path / "data", health_cache_s=0.0), ari_port=ari.port)
    api = await start_api(settings, sqlite_engine, offline_asterisk=True)
    try:
        for _ in range(5):
            assert (await api.call("GET", "/api/v1/health", role="viewer"))[0] == 200
        assert ari.pings == 5
        assert len(ari.peers) == 1, ari.peers  # one kept-alive connection, not a new client session each time
    finally:
        await api.client.close()
    assert ari.runner is not None


async def test_metrics_need_the_token_when_one_is_set(tmp_path: Path, sqlite_engine: Engine) -> None:
    api = await start_api(offline_settings(tmp_path / "data", metrics_token="scrape-secret-0123456789"),
                          sqlite_engine, offline_asterisk=True)
    try:
        response = await api.client.get("/metrics")
        assert (response.status, (await response.json())["error"]["code"]) == (401, "unauthorized")
        response = await api.client.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert response.status == 401
        response = await api.client.get("/metrics", headers={"Authorization": f"Bearer {api.tokens['admin']}"})
        assert response.status == 401  # a user's token is not the scrape token
        response = await api.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"})
        assert response.status == 200 and "eva_http_requests_total" in await response.text()
    finally:
        await api.client.close()


async def test_metrics_without_a_token_are_for_local_scrapers_only(tmp_path: Path, sqlite_engine: Engine) -> None:
    api = await start_api(offline_settings(tmp_path / "data", api_trusted_proxies="127.0.0.1"), sqlite_engine,
                          offline_asterisk=True)
    try:
        assert (await api.client.get("/metrics")).status == 200  # a scraper on this host
        # Through a reverse proxy the request comes from the world, even though the socket is loopback.
        response = await api.client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert (response.status, (await response.json())["error"]["code"]) == (403, "metrics_forbidden")
    finally:
        await api.client.close()


async def test_metrics_scrapes_do_not_count_the_database_each_time(api: Api) -> None:
    counted: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "knowledge_documents" in statement:
            counted.append(statement)

    event.listen(api.engine, "before_cursor_execute", count)
    try:
        responses = await asyncio.gather(*(api.client.get("/metrics") for _ in range(50)))
        assert {r.status for r in responses} == {200}
    finally:
        event.remove(api.engine, "before_cursor_execute", count)
    assert len(counted) <= 1, counted


async def test_restarted_app_still_answers_health(tmp_path: Path, sqlite_engine: Engine) -> None:
    """The cached monitor belongs to one application: a second app over the same database starts clean."""
    settings = offline_settings(tmp_path / "data")
    for _ in range(2):
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(create_app(settings, sqlite_engine, offline_asterisk=True), host="127.0.0.1", port=0))
        await client.start_server()
        try:
            response = await client.get("/api/v1/health")
            assert response.status == 200
        finally:
            await client.close()
